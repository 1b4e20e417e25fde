"""analysis.runs_to_tables and analysis/aggregate.py on a real MLflow store (SQLite, tmp_path)."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
from helpers import (
    CIFAR_TINY_BLOCKS,
    CIFAR_TINY_EXTRA,
    REPO,
    cifar_tiny_config,
    create_experiments,
    log_trial,
    write_cifar,
)
from mlflow.tracking import MlflowClient

from analysis import aggregate as aggregate_cli
from analysis.conditions import with_conditions
from analysis.report import summary_markdown
from analysis.runs_to_tables import (
    CURVE_COLUMNS,
    ArtifactReader,
    aggregate,
    aggregate_to,
    read_tables,
    write_tables,
)
from pipeline.tracking import TrialRun

EXTRA = CIFAR_TINY_EXTRA  # extra evaluations in the curves of the tiny trials
BLOCKS = CIFAR_TINY_BLOCKS  # residual blocks per stage of the tiny trials


def artifact_dir(uri: str, run_id: str) -> Path:
    """Return the local directory of a run's artifacts."""
    return Path(urlparse(MlflowClient(tracking_uri=uri).get_run(run_id).info.artifact_uri).path)


@dataclasses.dataclass(frozen=True)
class Store:
    """A filled MLflow store and the run ids of each kind."""

    uri: str
    database: Path  # the SQLite file behind uri
    data_root: Path
    finished: tuple[str, ...]  # FINISHED with good artifacts
    failed: str
    running: str
    corrupt: str  # FINISHED, but its curves.parquet was damaged afterwards
    no_config: str  # FINISHED without config.json: types come from the params


def fill_store(root: Path) -> Store:
    """Create a SQLite MLflow store of real tiny trials: finished, failed, running, corrupt."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data_root = write_cifar(root / "data", "cifar10", n_train=200, n_test=100)
    create_experiments(uri, ["smoke", "other"], root / "artifacts")
    finished = []
    for n in (2, 3):
        for seed in (0, 1):
            config = cifar_tiny_config(data_root, **{"model.blocks_per_stage": n, "run.seed": seed})
            finished.append(log_trial(uri, "smoke", config, f"t-n{n}-s{seed}", "finished"))
    recurrent = cifar_tiny_config(data_root, **{"model.recurrent_init": True, "coupling.lam": 0.5})
    finished.append(log_trial(uri, "smoke", recurrent, "t-rec", "finished"))
    subset = cifar_tiny_config(data_root, **{"data.train_size": 100})
    finished.append(log_trial(uri, "other", subset, "t-subset", "finished"))
    failed = log_trial(uri, "smoke", cifar_tiny_config(data_root), "t-failed", "failed")
    running = log_trial(uri, "smoke", cifar_tiny_config(data_root), "t-running", "running")
    corrupt = log_trial(uri, "smoke", cifar_tiny_config(data_root), "t-corrupt", "finished")
    (artifact_dir(uri, corrupt) / "curves.parquet").write_bytes(b"PAR1 truncated")
    # A configuration of its own: aggregation keeps one run per configuration.
    params_only = cifar_tiny_config(data_root, **{"optim.lr": 0.05})
    no_config = log_trial(uri, "other", params_only, "t-params-only", "finished")
    (artifact_dir(uri, no_config) / "config.json").unlink()
    return Store(
        uri, root / "mlflow.db", data_root, tuple(finished), failed, running, corrupt, no_config
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A real MLflow store, filled once per module (swap for the smoke grid's store)."""
    return fill_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def first(store: Store, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The first aggregation of the whole store into a fresh results directory."""
    out = tmp_path_factory.mktemp("results")
    return out, aggregate_to(store.uri, out, progress=False)


def test_runs_schema_has_one_typed_row_per_finished_run(store: Store, first) -> None:
    out, result = first
    runs, curves = read_tables(out)
    assert sorted(runs["run_id"]) == sorted((*store.finished, store.no_config))
    assert list(runs.columns[:9]) == [
        "run_id",
        "run_name",
        "experiment",
        "status",
        "grid",
        "trial_id",
        "git_commit",
        "start_time",
        "end_time",
    ]
    assert set(runs["status"]) == {"FINISHED"}
    assert runs["model.width"].dtype == "int64"
    assert runs["model.blocks_per_stage"].dtype == "int64"
    assert runs["coupling.lam"].dtype == "float64"
    assert runs["model.recurrent_init"].dtype == "bool"
    assert runs["data.train_size"].dtype == "Int64"
    assert runs["data.train_size"].isna().sum() == len(runs) - 1
    assert runs["coupling.bandwidth"].dtype == "float64"  # declared float, always None here
    assert pd.api.types.is_string_dtype(runs["model.block"])
    assert str(runs["end_time"].dtype) == "datetime64[ms, UTC]"
    client = MlflowClient(tracking_uri=store.uri)
    for key in ("final_test_error", "ci", "ri", "di", "ci_stage1", "di_stage3", "parameters"):
        assert runs[key].dtype == "float64", key
        logged = [client.get_run(run_id).data.metrics[key] for run_id in runs["run_id"]]
        # NaN indices are real: a tiny net at chance has none (pipeline.indices)
        assert runs[key].to_numpy() == pytest.approx(logged, nan_ok=True), key
    assert runs["final_test_error"].notna().all() and runs["ci"].notna().any()
    assert not any(c.startswith("curve/") for c in runs.columns)
    smoke = runs[runs["experiment"] == "smoke"]
    assert set(smoke["trial_id"]) == {"t-n2-s0", "t-n2-s1", "t-n3-s0", "t-n3-s1", "t-rec"}
    assert set(smoke["grid"]) == {"smoke"} and smoke["git_commit"].notna().all()
    ordered = runs.sort_values(["experiment", "run_name", "run_id"])["run_id"]
    assert list(runs["run_id"]) == list(ordered)
    # curves: every run, every stage, N readout and dropout steps, K + 1 extra steps
    assert list(curves.columns) == list(CURVE_COLUMNS)
    assert curves["stage"].dtype == "int64" and curves["step"].dtype == "int64"
    for run_id, n in zip(runs["run_id"], runs["model.blocks_per_stage"], strict=True):
        mine = curves[curves["run_id"] == run_id]
        counts = mine.groupby("curve")["step"].count().to_dict()
        assert counts == {"readout": 3 * n, "dropout": 3 * n, "extra": 3 * (EXTRA + 1)}
    assert result.fetched == len(runs) + 1  # the corrupt run was fetched too
    assert result.reused == 0


def test_params_fall_back_to_literal_eval_without_config_json(store: Store, first) -> None:
    out, _ = first
    runs, _ = read_tables(out)
    row = runs.set_index("run_id").loc[store.no_config]
    assert row["model.width"] == 4 and row["model.block"] == "ordinary"
    assert row["data.dataset"] == "cifar10" and not row["model.recurrent_init"]
    assert runs["model.recurrent_init"].dtype == "bool"
    assert row["coupling.lam"] == 0.0 and pd.isna(row["data.train_size"])


def test_failed_running_and_corrupt_runs_are_reported_and_kept_out(store: Store, first) -> None:
    _, result = first
    reasons = {s.run_id: s.reason for s in result.skipped}
    assert set(reasons) == {store.failed, store.running, store.corrupt}
    assert reasons[store.failed].startswith("status FAILED")
    assert reasons[store.running].startswith("status RUNNING")
    assert "corrupt artifact curves.parquet" in reasons[store.corrupt]


def test_second_aggregation_fetches_nothing_and_writes_identical_files(
    store: Store, tmp_path: Path
) -> None:
    first = aggregate_to(store.uri, tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")}
    second = aggregate_to(store.uri, tmp_path, progress=False)
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")}
    assert sorted(before) == ["curves.parquet", "runs.parquet"]
    assert before == after
    # only the corrupt run is tried again: it never made it into the tables
    assert second.fetched == 1
    assert second.reused == len(first.runs)
    pd.testing.assert_frame_equal(first.runs, second.runs)


def test_new_and_reopened_runs_are_fetched_others_reused(store: Store, tmp_path: Path) -> None:
    # A copy of the store's database: new runs here stay invisible to the other tests.
    shutil.copy(store.database, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "results"
    first = aggregate_to(uri, out, progress=False)
    config = cifar_tiny_config(store.data_root, **{"run.seed": 7})
    added = log_trial(uri, "smoke", config, "t-new", "finished")
    reopened = TrialRun.open(uri, "smoke", "t-n2-s0", config, "smoke")  # a retried trial
    reopened.client.log_metric(reopened.run_id, "final_test_error", 0.123, step=10)
    reopened.client.set_terminated(reopened.run_id, "FINISHED")
    third = aggregate_to(uri, out, progress=False)
    assert third.fetched == 3  # added, reopened, and the corrupt one again
    assert third.reused == len(first.runs) - 1
    runs = third.runs.set_index("run_id")
    assert added in runs.index
    assert runs.loc[reopened.run_id, "final_test_error"] == pytest.approx(0.123)


def test_a_reopened_run_still_running_is_skipped_not_reused(store: Store, tmp_path: Path) -> None:
    # A retried trial reopens its run: RUNNING again, its old end time possibly still stored.
    shutil.copy(store.database, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "results"
    first = aggregate_to(uri, out, progress=False)
    reopened = store.finished[0]
    MlflowClient(tracking_uri=uri).update_run(reopened, status="RUNNING")
    again = aggregate_to(uri, out, progress=False)
    assert reopened not in set(again.runs["run_id"])
    assert {s.run_id: s.reason for s in again.skipped}[reopened].startswith("status RUNNING")
    assert len(again.runs) == len(first.runs) - 1


def test_experiment_filter_keeps_rows_of_other_experiments(store: Store, tmp_path: Path) -> None:
    aggregate_to(store.uri, tmp_path, progress=False)
    result = aggregate_to(store.uri, tmp_path, experiments=["other"], progress=False)
    assert result.fetched == 0
    assert set(result.runs["experiment"]) == {"smoke", "other"}
    only = aggregate_to(store.uri, tmp_path / "only", experiments=["other"], progress=False)
    assert set(only.runs["experiment"]) == {"other"}
    assert {s.run_id for s in only.skipped} == set()


def test_cli_reports_skips_on_stderr_and_rejects_unknown_experiment(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code = aggregate_cli.main(["--tracking-uri", store.uri, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped run")]
    assert len(lines) == 3
    assert any("FAILED" in line for line in lines) and any("RUNNING" in line for line in lines)
    assert "fetched" in captured.out
    code = aggregate_cli.main(["--tracking-uri", store.uri, "--experiment", "nope"])
    assert code == 2
    assert "unknown experiment(s) ['nope']" in capsys.readouterr().err


def test_unreachable_server_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        out = tmp_path / "results"
        code = aggregate_cli.main(["--tracking-uri", f"http://127.0.0.1:{port}", "--out", str(out)])
    assert code == 2
    assert f"http://127.0.0.1:{port} is not reachable" in capsys.readouterr().err
    assert not out.exists()


def test_script_runs_from_the_repo_root(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [sys.executable, "analysis/aggregate.py", "--tracking-uri", store.uri]
    done = subprocess.run(
        [*command, "--out", str(out), "--experiment", "other"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "runs.parquet").exists() and (out / "curves.parquet").exists()


@pytest.mark.slow
def test_aggregates_from_a_real_mlflow_server(mlflow_server, tmp_path: Path) -> None:
    # Served artifacts: curves.parquet and config.json travel over HTTP, as on a cluster.
    data_root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    grid = "aggregate-over-http"
    finished = log_trial(
        mlflow_server.uri, grid, cifar_tiny_config(data_root), "http-1", "finished"
    )
    failed = log_trial(mlflow_server.uri, grid, cifar_tiny_config(data_root), "http-2", "failed")
    out = tmp_path / "results"
    result = aggregate_to(mlflow_server.uri, out, experiments=[grid], progress=False)
    assert list(result.runs["run_id"]) == [finished]
    assert result.runs["model.width"].dtype == "int64"  # typed from config.json
    assert [s.run_id for s in result.skipped] == [failed]
    assert len(result.curves) == 3 * (2 * BLOCKS + EXTRA + 1)
    again = aggregate_to(mlflow_server.uri, out, experiments=[grid], progress=False)
    assert (again.fetched, again.reused) == (0, 1)


@pytest.mark.slow
def test_served_artifacts_are_read_from_disk_without_the_server(
    mlflow_server, tmp_path: Path
) -> None:
    # What `make demo` does: the sweep logged through a server, the aggregation reads its
    # SQLite store and artifact folder directly, after the server is gone.
    data_root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    grid = "aggregate-from-disk"
    finished = log_trial(
        mlflow_server.uri, grid, cifar_tiny_config(data_root), "disk-1", "finished"
    )
    over_http = aggregate_to(mlflow_server.uri, tmp_path / "http", [grid], progress=False)
    store = mlflow_server.backend_store_uri
    served = Path(store.removeprefix("sqlite:///")).parent / "artifacts"
    from_disk = aggregate_to(
        store, tmp_path / "disk", [grid], progress=False, artifacts_destination=served
    )
    assert list(from_disk.runs["run_id"]) == [finished]
    pd.testing.assert_frame_equal(from_disk.curves, over_http.curves)
    assert from_disk.runs["model.width"].dtype == "int64"  # config.json was read
    # Without the folder the artifacts cannot be resolved: reported and skipped, no crash.
    blind = aggregate_to(store, tmp_path / "blind", [grid], progress=False)
    assert [s.run_id for s in blind.skipped] == [finished]


def test_one_configuration_counts_once_across_experiments(tmp_path: Path) -> None:
    # A figure grid and then paper_grid log the same trials: each seed must count once.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data_root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    create_experiments(uri, ["fig3", "paper_grid"], tmp_path / "artifacts")
    configs = [
        cifar_tiny_config(data_root, **{"run.seed": seed, "optim.epochs": 1}) for seed in (0, 1)
    ]
    older = [log_trial(uri, "fig3", c, f"fig3-{i}", "finished") for i, c in enumerate(configs)]
    # Run-local keys (threads, device, data root) do not make a trial another one.
    elsewhere = [c.with_updates({"run.threads": 2}) for c in configs]
    newer = [
        log_trial(uri, "paper_grid", c, f"pg-{i}", "finished") for i, c in enumerate(elsewhere)
    ]
    messages: list[str] = []
    out = tmp_path / "results"
    result = aggregate(ArtifactReader(MlflowClient(uri)), progress=False, report=messages.append)
    write_tables(result, out)
    runs, curves = read_tables(out)
    assert sorted(runs["run_id"]) == sorted(newer)  # the newest finished run of each
    assert sorted(runs["experiment"]) == ["paper_grid", "paper_grid"]
    by_kept = dict(zip(runs["run_id"], runs["dropped_run_ids"], strict=True))
    assert {run: list(ids) for run, ids in by_kept.items()} == {
        newer[0]: [older[0]],
        newer[1]: [older[1]],
    }
    assert set(curves["run_id"]) == set(newer)
    assert any("dropped 2 duplicate run(s)" in m for m in messages), messages
    # Idempotent: the second pass gives the same pair of tables.
    again = aggregate(
        ArtifactReader(MlflowClient(uri)), previous=(runs, curves), progress=False, report=print
    )
    pd.testing.assert_frame_equal(again.runs, result.runs)


def test_a_diverged_run_is_a_row_at_chance_counted_in_the_summary(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data_root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    create_experiments(uri, ["smoke"], tmp_path / "artifacts")
    fine = log_trial(uri, "smoke", cifar_tiny_config(data_root), "fine", "finished")
    exploding = cifar_tiny_config(data_root, **{"optim.lr": 1e30, "run.seed": 1})
    diverged = log_trial(uri, "smoke", exploding, "exploding", "finished")
    run = MlflowClient(uri).get_run(diverged)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged"] == "true" and run.data.tags["diverged_epoch"] == "1"
    result = aggregate(ArtifactReader(MlflowClient(uri)), progress=False, report=print)
    runs = result.runs.set_index("run_id")
    assert not runs.loc[fine, "diverged"] and runs.loc[diverged, "diverged"]
    assert runs.loc[diverged, "final_test_error"] == pytest.approx(0.9)  # CIFAR-10's chance
    assert pd.isna(runs.loc[diverged, "ci"])
    summary = summary_markdown(with_conditions(result.runs))
    assert "| 2 (1 diverged) |" in summary
    assert "1 run(s) diverged" in summary
    excluded = with_conditions(result.runs, exclude_diverged=True).set_index("run_id")
    assert pd.isna(excluded.loc[diverged, "error"]) and excluded.loc[fine, "error"] < 0.9
