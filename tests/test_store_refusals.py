"""A mistyped or empty tracking store is refused in one line, exit 2, and nothing is created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import LAUNCH, REPO, clean_env
from mlflow import MlflowClient

from sweeps.tracking_store import StoreError, check_store_exists, check_uri_form

AGGREGATE = [sys.executable, str(REPO / "analysis" / "aggregate.py")]
FIGURES = [sys.executable, str(REPO / "analysis" / "figures.py")]


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a command to completion in `cwd` without inherited tracking defaults."""
    environment = {k: v for k, v in clean_env(**env).items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Return the only line of stderr, failing if there are more (a traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error: " in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("sqlit:///tmp/x.db", "unknown scheme 'sqlit'"),
        ("/tmp/x.db", "not a URI"),
        ("sqlite://x.db", "three slashes"),
    ],
)
def test_malformed_uris_are_refused(uri: str, named: str) -> None:
    with pytest.raises(StoreError, match=named):
        check_uri_form(uri)


def test_a_password_never_reaches_the_message() -> None:
    with pytest.raises(StoreError) as refused:
        check_uri_form("postgres://user:hunter2@db/mlflow")
    assert "hunter2" not in str(refused.value)


def test_a_mistyped_store_is_refused_and_not_created(tmp_path: Path) -> None:
    typo = tmp_path / "mlfow.db"
    out = tmp_path / "results"
    result = run([*AGGREGATE, "--tracking-uri", f"sqlite:///{typo}", "--out", str(out)], tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert f"sqlite:///{typo}" in line and "does not exist" in line
    assert sorted(tmp_path.iterdir()) == []  # neither the store nor the results


def test_no_uri_in_an_empty_folder_names_the_default_store(tmp_path: Path) -> None:
    result = run([*AGGREGATE], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "ray_results/mlflow.db" in one_error_line(result)
    assert sorted(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a database, and long enough to be read as one by sqlite3" * 20)
    with pytest.raises(StoreError, match="not an SQLite database"):
        check_store_exists(f"sqlite:///{other}")


def test_a_store_without_experiments_is_refused(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # makes MLflow's tables, no sweep
    out = tmp_path / "results"
    result = run([*AGGREGATE, "--tracking-uri", uri, "--out", str(out)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "holds no experiment" in one_error_line(result)
    assert not out.exists()


def test_figures_refuse_a_missing_results_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = run([*FIGURES, "--results", str(missing), "--out", str(tmp_path / "f")], tmp_path)
    assert result.returncode == 2, result.stderr
    assert str(missing) in one_error_line(result)
    assert not (tmp_path / "f").exists()


def test_figures_say_no_runs_for_an_empty_table(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame({"run_id": pd.Series(dtype="string")}).to_parquet(results / "runs.parquet")
    result = run([*FIGURES, "--results", str(results), "--out", str(tmp_path / "f")], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "holds no runs" in one_error_line(result)


@pytest.mark.parametrize("uri", ["sqlit:///tmp/x.db", "x.db"])
def test_the_launcher_refuses_a_bad_uri_before_ray_starts(tmp_path: Path, uri: str) -> None:
    storage = tmp_path / "storage"
    result = run([*LAUNCH, "smoke", "--tracking-uri", uri, "--storage", str(storage)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert repr(uri) in one_error_line(result)
    assert "Ray" not in result.stdout + result.stderr
    assert not storage.exists()
