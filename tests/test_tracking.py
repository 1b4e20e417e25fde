"""pipeline/tracking.py against a real `mlflow server` process and a real (tiny) trial."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
from helpers import clutter_tiny_config
from iterconv_faults import InjectedFault
from mlflow import MlflowClient

from pipeline.config import TrialConfig
from pipeline.provenance import _read_git_head, git_commit
from pipeline.run_contents import EPOCH_HISTORY_METRIC, FINAL_METRIC_KEYS, TRIAL_ID_TAG
from pipeline.tracking import (
    TrialRun,
    close_unfinished_runs,
    ensure_experiment,
    find_trial_run,
    run_name,
)
from pipeline.train import run_trial

INDEX_KEYS = ["ci", "ri", "di"] + [f"{i}_stage{s}" for i in ("ci", "ri", "di") for s in (1, 2, 3)]


@pytest.mark.parametrize(
    ("updates", "name"),
    [
        ({"model.recurrent_init": True, "coupling.lam": 0.9, "model.block": "icr",
          "run.seed": 2, "model.width": 16}, "cifar10-w16-rec0.9-icr-s2"),
        ({"data.dataset": "mnist", "model.width": 8}, "mnist-w8-nonrec-s0"),
        ({"model.recurrent_init": True, "coupling.lam": 1.0, "data.train_size": 5000,
          "run.seed": 1}, "cifar10-w16-rec1-n5000-s1"),
        ({"model.bn_gamma_init": 0.1}, "cifar10-w16-nonrec-bn0.1-s0"),
        ({"model.recurrent_init": True, "coupling.lam": 0.5, "coupling.kernel": "triangular",
          "model.block": "pcr"}, "cifar10-w16-rec0.5-pcr-tri-s0"),
        ({"model.recurrent_init": True, "coupling.lam": 0.5, "coupling.first_coupled": 5},
         "cifar10-w16-rec0.5-fc5-s0"),
        # A torchvision ResNet is named by its arch: its model.width is unused.
        ({"model.arch": "torchvision-resnet18"}, "cifar10-tv-resnet18-nonrec-s0"),
        ({"model.arch": "torchvision-resnet50", "model.recurrent_init": True,
          "coupling.lam": 0.9, "data.dataset": "mnist", "run.seed": 1},
         "mnist-tv-resnet50-rec0.9-s1"),
    ],
)  # fmt: skip
def test_run_name(updates: dict, name: str) -> None:
    assert run_name(TrialConfig.from_dict(updates)) == name


def test_git_head_is_read_from_files(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert _read_git_head(git) is None  # a branch without commits
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert _read_git_head(git) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert _read_git_head(git) == "b" * 40  # a loose ref wins over packed-refs
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert _read_git_head(git) == "c" * 40  # detached HEAD
    assert _read_git_head(tmp_path / "absent") is None


def test_git_commit_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    source = Path(__file__).resolve().parent.parent / ".git"
    monkeypatch.setenv("ITERCONV_GIT_COMMIT", "from-env")
    assert git_commit() == (_read_git_head(source) or "from-env")
    monkeypatch.delenv("ITERCONV_GIT_COMMIT")
    assert git_commit() == (_read_git_head(source) or "unknown")


def test_ensure_experiment_is_idempotent(mlflow_client: MlflowClient) -> None:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    first = ensure_experiment(mlflow_client, name)
    assert ensure_experiment(mlflow_client, name) == first
    mlflow_client.delete_experiment(first)
    assert ensure_experiment(mlflow_client, name) == first  # restored, not a second one
    assert mlflow_client.get_experiment(first).lifecycle_stage == "active"


def test_retried_trial_logs_into_one_run_each_epoch_once(
    mlflow_server, mlflow_client: MlflowClient, sweep_data_root: Path, tmp_path: Path, inject_fault
) -> None:
    experiment, trial_id = f"exp-{uuid.uuid4().hex[:8]}", "trial_00000"
    config = clutter_tiny_config(sweep_data_root)
    inject_fault(2)
    checkpoints = str(tmp_path / "checkpoints")

    run = TrialRun.open(mlflow_server.uri, experiment, trial_id, config, grid="unit")
    with pytest.raises(InjectedFault) as fault:
        run_trial(config, lambda metrics, _: run.log_epoch(metrics), checkpoints)
    run.fail(fault.value)
    failed = mlflow_client.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert "InjectedFault" in failed.data.tags["error"]

    reopened = TrialRun.open(mlflow_server.uri, experiment, trial_id, config, grid="unit")
    assert reopened.run_id == run.run_id
    assert reopened.logged_epochs == {1}
    assert not reopened.log_epoch({"epoch": 1, EPOCH_HISTORY_METRIC: 0.5})  # already there
    running = mlflow_client.get_run(run.run_id)
    assert running.info.status == "RUNNING"
    assert "error" not in running.data.tags
    assert "InjectedFault" in running.data.tags["previous_error"]
    assert running.data.tags["attempts"] == "2"

    result = run_trial(config, lambda metrics, _: reopened.log_epoch(metrics), checkpoints)
    reopened.finish(result)

    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    runs = mlflow_client.search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [run.run_id]
    finished = mlflow_client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == run_name(config)
    history = mlflow_client.get_metric_history(run.run_id, EPOCH_HISTORY_METRIC)
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert {m.value for m in history if m.step == 1} != {0.5}  # the duplicate was not logged
    assert set(FINAL_METRIC_KEYS) | set(INDEX_KEYS) <= set(finished.data.metrics)
    assert finished.data.metrics["final_test_error"] == pytest.approx(
        result.metrics["final_test_error"]
    )
    assert finished.data.params == {k: str(v) for k, v in config.to_flat_dict().items()}
    tags = finished.data.tags
    assert tags[TRIAL_ID_TAG] == trial_id
    assert tags["grid"] == "unit"
    assert {"git_commit", "host", "version.torch", "version.mlflow"} <= set(tags)

    readout = result.curves.query("curve == 'readout' and stage == 1").sort_values("step")
    stepped = mlflow_client.get_metric_history(run.run_id, "curve/readout/stage1")
    assert [m.step for m in sorted(stepped, key=lambda m: m.step)] == readout["step"].tolist()
    assert [m.value for m in sorted(stepped, key=lambda m: m.step)] == pytest.approx(
        readout["error"].tolist()
    )

    artifacts = {a.path for a in mlflow_client.list_artifacts(run.run_id)}
    assert {"curves.parquet", "config.json"} <= artifacts
    local = Path(mlflow_client.download_artifacts(run.run_id, "curves.parquet", str(tmp_path)))
    pd.testing.assert_frame_equal(pd.read_parquet(local), result.curves.reset_index(drop=True))
    config_json = mlflow_client.download_artifacts(run.run_id, "config.json", str(tmp_path))
    assert TrialConfig.from_dict(json.loads(Path(config_json).read_text())) == config


def test_close_unfinished_runs_marks_only_running_ones(
    mlflow_server, mlflow_client: MlflowClient, sweep_data_root: Path
) -> None:
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    config = clutter_tiny_config(sweep_data_root)
    running = TrialRun.open(mlflow_server.uri, experiment, "t1", config, grid="unit")
    failed = TrialRun.open(mlflow_server.uri, experiment, "t2", config, grid="unit")
    failed.fail(RuntimeError("boom"))

    closed = close_unfinished_runs(mlflow_server.uri, experiment, ["t1", "t2", "t3"])

    assert closed == [running.run_id]
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    assert find_trial_run(mlflow_client, experiment_id, "t1").info.status == "KILLED"
    assert find_trial_run(mlflow_client, experiment_id, "t2").info.status == "FAILED"
    assert find_trial_run(mlflow_client, experiment_id, "t3") is None
