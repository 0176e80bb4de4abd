"""recpipe: a nightly retraining pipeline for a text-aware sequential recommender.

One module per stage (`python -m pipeline_tasks.<stage>`), sharing `params`, `io`,
`constants` and `errors`. Nothing here does work at import time.
"""
