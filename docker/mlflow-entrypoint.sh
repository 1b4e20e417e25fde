#!/bin/sh
# Start the MLflow server of docker/compose.yaml (and of the cluster's head node): a database
# backend store, served artifacts, and basic auth when MLFLOW_BASIC_AUTH=true.
#
# Nothing open by default: a server that other machines can reach (MLFLOW_BIND_ADDRESS not a
# loopback address) must have basic auth, and its users and passwords live in their own
# database (MLFLOW_AUTH_DATABASE_URI), never in the tracking store.
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://...)}"
bind="${MLFLOW_BIND_ADDRESS:-127.0.0.1}"
auth="${MLFLOW_BASIC_AUTH:-false}"

case "$bind" in
    127.*|localhost|::1|\[::1\]) open=false ;;
    *) open=true ;;
esac
if [ "$open" = true ] && [ "$auth" != true ]; then
    echo "mlflow-entrypoint: refusing MLFLOW_BIND_ADDRESS=$bind without basic auth:" \
        "set MLFLOW_BASIC_AUTH=true and MLFLOW_AUTH_ADMIN_PASSWORD, or bind 127.0.0.1" >&2
    exit 2
fi

# Host headers carry the port (127.0.0.1:5000): the patterns allow it (fnmatch).
# The store URI reaches mlflow through its environment (MLFLOW_BACKEND_STORE_URI), not argv:
# it holds the database password, and argv is visible to every process of the host.
export MLFLOW_BACKEND_STORE_URI
set -- mlflow server \
    --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,10.*,172.*,192.168.*}"

if [ "$auth" = true ]; then
    : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD for basic auth}"
    auth_db="${MLFLOW_AUTH_DATABASE_URI:-sqlite:////mlflow-auth/basic_auth.db}"
    if [ "$auth_db" = "$MLFLOW_BACKEND_STORE_URI" ]; then
        echo "mlflow-entrypoint: MLFLOW_AUTH_DATABASE_URI must not be the tracking store:" \
            "keep users and passwords in their own database" >&2
        exit 2
    fi
    case "$auth_db" in
        sqlite:////*) mkdir -p "$(dirname "${auth_db#sqlite:///}")" ;;
    esac
    # MLflow's CSRF protection needs one key shared by the server's workers.
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    umask 077  # the config holds the admin password: readable by this user only
    config_dir="$(mktemp -d)"
    export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
    cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = ${auth_db}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_AUTH_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    umask 022
    set -- "$@" --app-name basic-auth
fi

exec "$@"
