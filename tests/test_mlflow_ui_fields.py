"""What the MLflow UI shows of a trial: experiment kind, system tags, datasets, system metrics,
stored weights; against a real `mlflow server` and a real (tiny) trial."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from helpers import clutter_tiny_config
from mlflow import MlflowClient

from pipeline.provenance import git_commit
from pipeline.run_contents import NETWORK_ARTIFACT, WEIGHTS_ARTIFACT
from pipeline.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    TrialRun,
    describe,
    ensure_experiment,
    experiment_url,
)
from pipeline.train import run_trial
from pipeline.trained_model import load_trial_model
from sweeps.tracking_server import tracking_server


def test_experiments_are_model_training_and_links_open_the_runs(
    mlflow_client: MlflowClient,
) -> None:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    experiment_id = ensure_experiment(mlflow_client, name)
    assert mlflow_client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == (
        MODEL_TRAINING_KIND
    )
    older = mlflow_client.create_experiment(f"{name}-old")  # untagged, as before this version
    assert ensure_experiment(mlflow_client, f"{name}-old") == older
    assert mlflow_client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert experiment_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_description_says_the_condition_in_words(sweep_data_root: Path) -> None:
    config = clutter_tiny_config(
        sweep_data_root,
        **{"model.block": "icr", "model.recurrent_init": True, "coupling.lam": 0.9},
    )
    text = describe(config)
    assert "\n" not in text
    for words in ("ICR ResNet (mu 0.95)", "width 4", "recurrent init", "coupling 0.9"):
        assert words in text
    assert "Digitclutter-3" in text and "seed 0" in text
    # A torchvision ResNet: its name and stages, not the unused width and blocks.
    torchvision = describe(
        config.with_updates(
            {
                "model.arch": "torchvision-resnet18",
                "model.block": "ordinary",
                "model.width": 16,
                "model.blocks_per_stage": 16,
            }
        )
    )
    assert torchvision.startswith("torchvision resnet18 (stages of 2, 1, 1, 1 shape-preserving")
    assert "width" not in torchvision and "coupling 0.9" in torchvision


def test_a_trial_run_fills_the_ui_fields(
    mlflow_server,
    mlflow_client: MlflowClient,
    sweep_data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sample every second so that this few-second trial gets system metrics.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    config = clutter_tiny_config(sweep_data_root)
    run = TrialRun.open(mlflow_server.uri, experiment, "trial_00000", config, grid="unit")
    seen: list = []

    def on_data(splits: tuple) -> None:
        seen.extend(splits)
        run.log_datasets(splits, config.data.root)

    result = run_trial(config, lambda metrics, _: run.log_epoch(metrics), on_data=on_data)
    run.log_datasets(seen, config.data.root)  # a retry logs them again: no duplicates
    run.finish(result)

    finished = mlflow_client.get_run(run.run_id)
    tags = finished.data.tags
    assert tags["mlflow.source.name"] == "sweeps/launch.py"
    assert tags["mlflow.source.git.commit"] == git_commit()
    assert tags["mlflow.user"]
    assert tags["mlflow.note.content"] == describe(config)

    inputs = finished.inputs.dataset_inputs
    by_split = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(by_split) == ["test", "train"] and len(inputs) == 2
    assert {d.name for d in by_split.values()} == {"digitclutter-3"}
    assert json.loads(by_split["train"].profile)["num_rows"] == 256
    assert json.loads(by_split["test"].profile)["num_rows"] == 128
    assert by_split["train"].digest != by_split["test"].digest
    assert len(by_split["train"].digest) == 12

    system = {key for key in finished.data.metrics if key.startswith("system/")}
    assert "system/cpu_utilization_percentage" in system
    assert "system/system_memory_usage_megabytes" in system

    artifacts = {a.path for a in mlflow_client.list_artifacts(run.run_id, "model")}
    assert artifacts == {WEIGHTS_ARTIFACT, NETWORK_ARTIFACT}
    state = torch.load(
        mlflow_client.download_artifacts(run.run_id, WEIGHTS_ARTIFACT, str(tmp_path)),
        weights_only=True,
    )
    assert state.keys() == result.model.state_dict().keys()
    model = load_trial_model(run.run_id, mlflow_server.uri)
    images = torch.rand(4, 1, 32, 32)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), result.model(images))


@pytest.mark.slow
def test_the_launchers_server_answers_by_a_non_local_address(tmp_path: Path) -> None:
    # 127.0.0.2 is neither localhost nor a private range to MLflow's Host check (it answers
    # 403 without --allowed-hosts), like a cluster node's public address; it stays on loopback.
    with tracking_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "log", "127.0.0.2"
    ) as server:
        assert ensure_experiment(MlflowClient(server.uri), "remote")
