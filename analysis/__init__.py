"""From MLflow runs to Parquet tables and the paper's figures (docs/results.md)."""
