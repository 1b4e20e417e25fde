#!/bin/sh
# Start the MLflow server of docker/compose.yaml: PostgreSQL backend store, served artifacts,
# and basic auth when MLFLOW_BASIC_AUTH=true (admin credentials from the environment).
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://...)}"
set -- mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,127.0.0.1,10.*,172.*,192.168.*}"

if [ "${MLFLOW_BASIC_AUTH:-false}" = "true" ]; then
    : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD for basic auth}"
    export MLFLOW_AUTH_CONFIG_PATH=/tmp/basic_auth.ini
    cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_AUTH_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    set -- "$@" --app-name basic-auth
fi

exec "$@"
