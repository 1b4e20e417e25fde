"""Aggregation under faults: a crash mid-write keeps a consistent pair; bad runs are skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
from helpers import REPO
from mlflow.tracking import MlflowClient

from analysis.runs_to_tables import CURVES_FILE, RUNS_FILE, aggregate_to, read_tables
from analysis.table_pair import JOURNAL, write_tables_together
from pipeline.config import TrialConfig
from pipeline.tracking import TrialRun
from pipeline.train import TrialResult

# A child process writes the new pair and is SIGKILLed at one point of the protocol.
CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    from analysis import table_pair

    directory, crash_before = sys.argv[1], sys.argv[2]
    renamed = []
    original = table_pair._replace

    def replace(source, target):
        if target.name == crash_before:
            os.kill(os.getpid(), signal.SIGKILL)  # dies here: no cleanup, no finally
        original(source, target)

    table_pair._replace = replace
    frame = lambda tag: pd.DataFrame({"version": [tag]})
    table_pair.write_tables_together(
        {"curves.parquet": frame("new"), "runs.parquet": frame("new")}, directory
    )
    """
)


def versions(directory: Path) -> tuple[str, str]:
    """Return the version tag of the runs and curves tables as read_tables sees them."""
    runs, curves = read_tables(directory)
    return runs["version"].item(), curves["version"].item()


def on_disk(directory: Path, name: str) -> str:
    """Return the version tag of one table file, read raw (no recovery)."""
    return pd.read_parquet(directory / name)["version"].item()


@pytest.fixture
def old_pair(tmp_path: Path) -> Path:
    """Return a results directory holding a consistent old pair of tables."""
    old = pd.DataFrame({"version": ["old"]})
    write_tables_together({RUNS_FILE: old, CURVES_FILE: old}, tmp_path)
    return tmp_path


def crash_writing(directory: Path, crash_before: str) -> None:
    """Run the crashing writer; check that it was killed."""
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(directory), crash_before],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr


def test_crash_before_the_commit_keeps_the_old_pair(old_pair: Path) -> None:
    crash_writing(old_pair, crash_before=JOURNAL)
    assert (old_pair / f".{RUNS_FILE}.new").exists()  # the new tables were staged
    assert versions(old_pair) == ("old", "old")
    assert sorted(p.name for p in old_pair.iterdir()) == [CURVES_FILE, RUNS_FILE]


def test_crash_between_the_two_renames_is_completed_by_the_next_reader(old_pair: Path) -> None:
    crash_writing(old_pair, crash_before=RUNS_FILE)  # curves.parquet already replaced
    assert (on_disk(old_pair, RUNS_FILE), on_disk(old_pair, CURVES_FILE)) == ("old", "new")
    assert versions(old_pair) == ("new", "new")
    assert sorted(p.name for p in old_pair.iterdir()) == [CURVES_FILE, RUNS_FILE]


def finished_run(uri: str, trial_id: str, data_root: Path) -> str:
    """Log a FINISHED run through pipeline.tracking with a small hand-made result."""
    config = TrialConfig().with_updates({"data.root": str(data_root), "run.seed": len(trial_id)})
    run = TrialRun.open(uri, "faults", trial_id, config, "faults")
    curves = pd.DataFrame(
        [(s, c, k, 0.5) for s in (1, 2, 3) for c in ("readout", "dropout") for k in range(3)],
        columns=["stage", "curve", "step", "error"],
    )
    metrics = {"final_test_error": 0.25, "epochs": 1}
    run.finish(TrialResult(config, metrics, {"ci": 0.5}, curves))
    return run.run_id


def test_malformed_metric_key_and_unreadable_artifacts_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("faults", artifact_location=(tmp_path / "artifacts").as_uri())
    good = finished_run(uri, "t-good", tmp_path)
    malformed = finished_run(uri, "t-malformed-key", tmp_path)
    unreadable = finished_run(uri, "t-unreadable", tmp_path)
    # A stepped curve metric with a malformed key (no stage): the curves come from
    # curves.parquet, so the key is ignored, never fatal.
    client.log_metric(malformed, "curve/readout", 0.5, step=0)
    # An artifact folder no one can list (a symlink loop fails even for root).
    folder = Path(urlparse(client.get_run(unreadable).info.artifact_uri).path)
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    folder.symlink_to(folder)

    result = aggregate_to(uri, tmp_path / "results", progress=False)
    assert sorted(result.runs["run_id"]) == sorted([good, malformed])
    assert "curve/readout" not in result.runs.columns
    messages = capsys.readouterr().err
    assert f"skipped run {unreadable}" in messages and "unreadable" in messages
