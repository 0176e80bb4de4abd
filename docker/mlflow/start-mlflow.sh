#!/bin/sh
# Starts the MLflow tracking server with basic auth (compose service `mlflow`).
# The auth config is written from the environment at start, so no password sits in a file of
# the repository or the image; MLFLOW_AUTH_ADMIN_PASSWORD creates the admin user on first start.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set it (postgresql+psycopg2://mlflow:...@postgres:5432/mlflow)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set it (postgresql+psycopg2://mlflow:...@postgres:5432/mlflow_auth)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD in .env (12+ characters)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SECRET_KEY in .env}"
config="${TMPDIR:-/tmp}/basic_auth.ini"
umask 077
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
