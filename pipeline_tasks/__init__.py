"""recpipe: a nightly retraining pipeline for a text-aware sequential recommender.

The tree says the rule: a top-level module here is a DVC stage (`python -m pipeline_tasks.<stage>`,
one `run(params, root)` and a `main()`), a folder is a library. Dependencies point one way,
core ← data ← model ← serving ← stages ← ops (infra beside data); `lint-imports` checks it
(contracts in pyproject.toml). Nothing here does work at import time.
"""
