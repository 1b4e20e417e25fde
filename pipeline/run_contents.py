"""What a trial's MLflow run holds: the names of its tags, artifacts and metrics (docs/results.md).

Torch-free and mlflow-free, so the writer (pipeline/tracking.py) and the reader
(analysis/runs_to_tables.py) spell each name once, here.
"""

from __future__ import annotations

# Tags.
TRIAL_ID_TAG = "ray_trial_id"  # the Ray trial id that reopens a run on retry
GRID_TAG = "grid"  # the named grid (sweeps/grids.py) the trial belongs to
GIT_COMMIT_TAG = "git_commit"
ERROR_TAG = "error"  # "Type: message" of a FAILED attempt
DIVERGED_TAG = "diverged"  # "true" when the training loss became non-finite
DIVERGED_EPOCH_TAG = "diverged_epoch"

# Artifacts.
CONFIG_ARTIFACT = "config.json"  # TrialConfig.to_dict()
CURVES_ARTIFACT = "curves.parquet"  # the perturbation curves, vocabulary.CURVE_COLUMNS
# The trained network of a trial, loadable with torch.load(..., weights_only=True).
WEIGHTS_ARTIFACT = "model/state_dict.pt"
NETWORK_ARTIFACT = "model/network.json"  # build_model's arguments

# Metrics.
# The per-epoch metric whose history says which epochs a reopened run already has.
EPOCH_HISTORY_METRIC = "test_error"
FINAL_METRIC_KEYS = (
    "final_test_error",
    "final_test_loss",
    "final_train_loss",
    "epochs",
    "parameters",
    "train_seconds",
)
CURVE_METRIC_PREFIX = "curve/"  # stepped copies of the curves, for the MLflow UI


def curve_metric_key(curve: str, stage: int) -> str:
    """Return the stepped metric of one perturbation curve: `curve/<curve>/stage<s>`."""
    return f"{CURVE_METRIC_PREFIX}{curve}/stage{stage}"
