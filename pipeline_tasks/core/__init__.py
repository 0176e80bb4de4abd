"""What every layer shares: constants, errors, params, atomic file I/O, MLflow glue, ranking
metrics and the stage command line. Imports nothing else of recpipe."""
