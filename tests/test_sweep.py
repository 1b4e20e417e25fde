"""sweeps/launch.py end to end: real Ray (local and a two-node cluster), real MLflow servers.

The slow tests run the real run_trial on the smoke grid (or a part of it, shrunk by
overrides) and check what a user would: one FINISHED MLflow run per trial with its curves and
indices, retries into the same run, a resumed sweep that runs only what was unfinished.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import LAUNCH, REPO, TINY_SWEEP, clean_env, explain, launch, ray_node, runs_of
from iterconv_faults import fault_environment
from mlflow import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config

from analysis.conditions import with_conditions
from analysis.report import write_summary
from analysis.runs_to_tables import aggregate_to, read_tables
from sweeps.grids import GRIDS, SMOKE_BASE
from sweeps.tracking_server import (
    TrackingUnreachableError,
    check_reachable,
    free_port,
    tracking_server,
)

INDEX_KEYS = {"ci", "ri", "di", "ci_stage1", "ri_stage2", "di_stage3"}
SMOKE_SLICE = 4  # trials of the smoke grid the slow test runs: CI time
SMOKE_MAX_ERROR = 0.9  # test error every smoke trial ends below (chance: 0.992)


# Bad input: a clear message, exit status 2, nothing started.


def test_unknown_grid_lists_the_grids() -> None:
    result = launch("nope", "--dry-run")
    assert result.returncode == 2, explain(result)
    assert "unknown grid 'nope'" in result.stderr
    assert all(name in result.stderr for name in GRIDS)


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    result = launch("smoke", "model.width=wide", "--storage", str(tmp_path))
    assert result.returncode == 2, explain(result)
    assert "model.width='wide'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreachable_tracking_server_starts_nothing(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = launch("smoke", "--tracking-uri", uri, "--storage", str(tmp_path / "results"))
    assert result.returncode == 2, explain(result)
    assert f"tracking server {uri} is not reachable" in result.stderr
    assert not (tmp_path / "results").exists()
    assert time.monotonic() - start < 60  # no retries with back-off


def test_launch_py_works_when_copied_alone(tmp_path: Path) -> None:
    # What `ray submit` does: only this file travels; the project comes from the install.
    alone = tmp_path / "launch.py"
    shutil.copy(REPO / "sweeps" / "launch.py", alone)
    result = subprocess.run(
        [sys.executable, str(alone), "fig2", "--dry-run", "--seeds", "6"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, explain(result)
    assert "grid fig2: 6 trials" in result.stdout
    assert list(tmp_path.iterdir()) == [alone]  # a dry run writes nothing


def test_resume_without_a_sweep_is_refused(tmp_path: Path) -> None:
    result = launch("smoke", "--resume", "--storage", str(tmp_path))
    assert result.returncode == 2, explain(result)
    assert "no sweep to resume" in result.stderr


# Cluster and images, checked offline.


def test_cluster_yaml_passes_ray_validation() -> None:
    config = yaml.safe_load((REPO / "sweeps" / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["docker"]["image"]
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] > worker["min_workers"] >= 1  # autoscaling GPU workers
    options = " ".join(config["docker"]["run_options"])
    assert "/mnt/shared:/mnt/shared" in options and "ITERCONV_STORAGE=/mnt/shared" in options
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_wrkers"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_compose_binds_localhost_and_uses_postgres() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow"}
    assert "ports" not in services["postgres"]
    (port,) = services["mlflow"]["ports"]
    host = re.fullmatch(r"\$\{MLFLOW_BIND_ADDRESS:-([^}]*)\}:.*:5000", port)
    assert host and host.group(1) == "127.0.0.1"
    store = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert store.startswith("postgresql://") and "@postgres:5432/" in store
    entrypoint = (REPO / "docker" / "mlflow-entrypoint.sh").read_text()
    assert "--serve-artifacts" in entrypoint and "--app-name basic-auth" in entrypoint
    build = services["mlflow"]["build"]
    assert (REPO / "docker" / build["context"] / build["dockerfile"]).exists()


def test_dockerfile_installs_the_project_on_cuda() -> None:
    lines = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    instructions = [line.split()[0] for line in lines if line and not line[0].isspace()]
    assert (
        next(line for line in lines if line.startswith("FROM "))
        .split()[1]
        .startswith("nvidia/cuda:")
    )
    assert "COPY" in instructions and "RUN" in instructions
    text = "\n".join(lines)
    for package in ("models", "pipeline", "sweeps", "analysis"):
        assert f"COPY {package} {package}" in text
    assert "ITERCONV_GIT_COMMIT=$GIT_COMMIT" in text


# Real sweeps.


@pytest.mark.slow
def test_smoke_grid_on_local_ray(tmp_path: Path, sweep_data_root: Path) -> None:
    # The grid's first SMOKE_SLICE trials as they are (the whole grid is `make demo`'s).
    storage = tmp_path / "results"
    data = ["--data-root", str(sweep_data_root), f"--limit={SMOKE_SLICE}"]
    result = launch("smoke", "--storage", str(storage), *data, timeout=600)
    assert result.returncode == 0, explain(result)
    assert f"sweep smoke: {SMOKE_SLICE} of {SMOKE_SLICE} trials finished" in result.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{storage}/mlflow.db" in result.stdout
    served = re.search(r"MLflow: (http://127\.0\.0\.1:\d+)", result.stdout)
    with pytest.raises(TrackingUnreachableError):  # the launcher stopped its server
        check_reachable(served.group(1), timeout=2)

    # Browse the runs afterwards, as the printed `mlflow ui` command does.
    with tracking_server(
        f"sqlite:///{storage}/mlflow.db", storage / "mlartifacts", tmp_path / "ui.log"
    ) as server:
        client = MlflowClient(server.uri)
        runs = runs_of(client, "smoke")
        assert len(runs) == SMOKE_SLICE
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert len({r.data.tags["ray_trial_id"] for r in runs}) == SMOKE_SLICE
        assert len({r.info.run_name for r in runs}) == SMOKE_SLICE
        for run in runs:
            assert set(run.data.metrics) >= INDEX_KEYS, run.info.run_name
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"curves.parquet", "config.json"} <= artifacts
            steps = client.get_metric_history(run.info.run_id, "test_error")
            epochs = SMOKE_BASE["optim.epochs"]
            assert sorted(m.step for m in steps) == list(range(1, epochs + 1))
            # The smoke nets must end clearly below chance (0.992), or the figures say nothing.
            assert run.data.metrics["final_test_error"] < SMOKE_MAX_ERROR, run.info.run_name


@pytest.mark.slow
def test_two_node_cluster_places_trials_on_both_nodes(
    tmp_path: Path, mlflow_server, sweep_data_root: Path
) -> None:
    # A private token: the test's cluster never mixes with another Ray on this machine.
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    head = ["--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "2"]
    head += ["--include-dashboard=false", "--temp-dir", temp_dir]
    worker = ["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "2"]
    experiment = "two-node"
    try:
        with (
            ray_node(head, env, tmp_path / "head.log"),
            ray_node(worker, env, tmp_path / "worker.log"),
        ):
            result = launch(
                "smoke",
                *[item for item in TINY_SWEEP if not item.startswith("optim.epochs=")],
                "optim.epochs=1",
                "--limit=4",
                f"--address=127.0.0.1:{port}",
                f"--tracking-uri={mlflow_server.uri}",
                f"--experiment={experiment}",
                f"--storage={tmp_path / 'results'}",
                f"--data-root={sweep_data_root}",
                env=env,
            )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, explain(result)
    assert "4 trials on GPUs" in result.stdout
    runs = runs_of(MlflowClient(mlflow_server.uri), experiment)
    assert len(runs) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2
    assert {r.data.tags["ray_resources"] for r in runs} == {'{"CPU": 1.0, "GPU": 0.125}'}
    assert all(len(json.loads(r.data.tags["ray_gpu_ids"])) == 1 for r in runs)  # a logical GPU each


@pytest.mark.slow
def test_failed_trial_is_retried_into_the_same_run(
    tmp_path: Path, mlflow_server, sweep_data_root: Path
) -> None:
    experiment = "fault"
    # 1-based: the trial dies as epoch 2 starts, after epoch 1's checkpoint, once.
    fault = fault_environment(2, tmp_path / "fault-fired")
    result = launch(
        "smoke",
        *TINY_SWEEP,
        "--limit=1",
        f"--tracking-uri={mlflow_server.uri}",
        f"--experiment={experiment}",
        f"--storage={tmp_path / 'results'}",
        f"--data-root={sweep_data_root}",
        env=clean_env(**fault),
    )
    assert result.returncode == 0, explain(result)
    assert "retrying" in result.stdout
    client = MlflowClient(mlflow_server.uri)
    (run,) = runs_of(client, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempts"] == "2"
    assert "InjectedFault" in run.data.tags["previous_error"]
    for metric in ("test_error", "train_loss", "epoch"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2], metric


@pytest.mark.slow
def test_a_diverged_trial_is_counted_not_retried(
    tmp_path: Path, mlflow_server, sweep_data_root: Path
) -> None:
    experiment = "diverged"
    result = launch(
        "smoke",
        *TINY_SWEEP,
        "optim.lr=1e30",
        "optim.warmup_epochs=0",
        "--limit=1",
        f"--tracking-uri={mlflow_server.uri}",
        f"--experiment={experiment}",
        f"--storage={tmp_path / 'results'}",
        f"--data-root={sweep_data_root}",
    )
    assert result.returncode == 0, explain(result)  # a diverged trial is a finished trial
    assert "retrying" not in result.stdout
    assert "DIVERGED in epoch 1, counted at chance" in result.stdout
    (run,) = runs_of(MlflowClient(mlflow_server.uri), experiment)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged"] == "true" and run.data.tags["diverged_epoch"] == "1"
    assert "attempts" not in run.data.tags  # one attempt
    out = tmp_path / "tables"
    aggregate_to(mlflow_server.uri, out, [experiment], progress=False)
    runs, _ = read_tables(out)
    assert list(runs["diverged"]) == [True]
    assert list(runs["final_test_error"]) == [pytest.approx(1 - 1 / 120)]  # Digitclutter-3
    summary = write_summary(with_conditions(runs), tmp_path / "figures").read_text()
    assert "| 1 (1 diverged) |" in summary


@pytest.mark.slow
def test_interrupted_sweep_resumes_only_unfinished_trials(
    tmp_path: Path, mlflow_server, sweep_data_root: Path
) -> None:
    experiment, storage = "resume", tmp_path / "results"
    client = MlflowClient(mlflow_server.uri)
    common = [
        f"--tracking-uri={mlflow_server.uri}",
        f"--experiment={experiment}",
        f"--storage={storage}",
        f"--data-root={sweep_data_root}",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            [*LAUNCH, "smoke", *TINY_SWEEP, "--limit=3", "--max-concurrent=1", *common],
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not [r for r in runs_of(client, experiment) if r.info.status == "FINISHED"]:
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the sweep's state and stops
        assert first.wait(180) == 1, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    before = {r.data.tags["ray_trial_id"]: r for r in runs_of(client, experiment)}
    done_before = {t: r for t, r in before.items() if r.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 3
    assert "--resume" in log.read_text()

    # The resumed sweep keeps its experiment: --experiment is not repeated (it would be refused).
    result = launch("smoke", "--resume", *[c for c in common if not c.startswith("--experiment")])
    assert result.returncode == 0, explain(result)
    assert "3 of 3 trials finished" in result.stdout

    after = {r.data.tags["ray_trial_id"]: r for r in runs_of(client, experiment)}
    assert len(runs_of(client, experiment)) == 3  # one run per trial, none duplicated
    assert {r.info.status for r in after.values()} == {"FINISHED"}
    for trial_id, run in done_before.items():  # finished trials were not run again
        assert after[trial_id].info.end_time == run.info.end_time
        assert "attempts" not in after[trial_id].data.tags
    started = [line for line in result.stdout.splitlines() if "] started" in line]
    assert len(started) == 3 - len(done_before)
    for run in after.values():
        steps = client.get_metric_history(run.info.run_id, "test_error")
        assert sorted(m.step for m in steps) == [1, 2], run.info.run_name
