# A small MLflow tracking server image with the PostgreSQL driver (docker/compose.yaml).
# mlflow[auth]: the basic-auth app (Flask-WTF). Runs as the unprivileged user mlflow.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary>=2.9" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlartifacts /mlflow-auth \
    && chown mlflow:mlflow /mlartifacts /mlflow-auth
COPY --chmod=0755 mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
USER mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
