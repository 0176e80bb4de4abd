"""Local services: a throwaway PostgreSQL cluster and `make services` (PostgreSQL, MLflow server,
Airflow, Spark standalone on loopback)."""
