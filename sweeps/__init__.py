"""Named grids of trials and their launcher on Ray Tune, with MLflow tracking."""
