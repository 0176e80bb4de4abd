"""Running the pipeline: `dvc repro` with a parent MLflow run, the Airflow task bodies and trigger
form, data versions on the runs branch, alerts and the `recpipe` command line."""
