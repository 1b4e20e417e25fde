"""From MLflow runs to Parquet tables and the paper's figures (DESIGN 8)."""
