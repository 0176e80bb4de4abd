#!/bin/bash
# First start of the postgres container (docker-entrypoint-initdb.d): one database and owner per
# client, passwords from the environment (.env). Runs only when the data volume is empty.
set -euo pipefail
create() {  # database, owner, password
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v db="$1" -v owner="$2" -v pw="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'owner', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
}
create airflow     airflow "${AIRFLOW_DB_PASSWORD:?}"
create mlflow      mlflow  "${MLFLOW_DB_PASSWORD:?}"
create mlflow_auth mlflow  "${MLFLOW_DB_PASSWORD:?}"
create optuna      optuna  "${OPTUNA_DB_PASSWORD:?}"
create events      events  "${EVENTS_DB_PASSWORD:?}"
