"""Faults a sweep meets, injected into real runs: local Ray, a two-node `ray start` cluster,
real `mlflow server` processes. Each test names the fault of docs/faults.md it shows survived.

Faults inside the trials come from tests/faults (its sitecustomize.py, put on the PYTHONPATH of
the launcher and of the Ray nodes, so of every worker); the production code has no hook.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    LAUNCH,
    REPO,
    TINY_SWEEP,
    clean_env,
    explain,
    launch,
    ray_node,
    runs_of,
    wait_for,
)
from iterconv_faults import sweep_fault_environment
from mlflow import MlflowClient

from pipeline.config import TrialConfig
from sweeps.tracking_server import free_port, tracking_server

# How long the tracking server stays stopped (SIGSTOP ... SIGCONT): the 60 s, well
# past MLflow's 5 s health check yet inside its 120 s request timeout, so trials wait.
STOP_SECONDS = 60
FINAL_KEYS = ("final_test_error", "ci", "epochs")


def fault_env(fault_dir: Path, *faults: str, **extra: str) -> dict[str, str]:
    """Return a launcher environment with the fault hook on PYTHONPATH and `faults` armed."""
    return clean_env(**sweep_fault_environment(fault_dir, *faults), **extra)


def held(fault_dir: Path, epoch: int) -> list[tuple[str, int]]:
    """Return (run name, pid) of the trials the hook holds before `epoch`."""
    found = []
    for marker in fault_dir.glob(f"held-{epoch}-*"):
        name, pid = marker.name.removeprefix(f"held-{epoch}-").rsplit("-", 1)
        found.append((name, int(pid)))
    return found


def parent_pid(pid: int) -> int:
    """Return the parent of a process (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def children_matching(parent: int, needle: str) -> list[int]:
    """Return the pids of `parent`'s children whose command line contains `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == parent:
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in command:
                found.append(int(entry.name))
    return found


def assert_one_clean_run_per_trial(client: MlflowClient, experiment: str, trials: int, epochs: int):
    """Check: `trials` FINISHED runs, one per trial, every epoch and final metric logged once."""
    runs = runs_of(client, experiment)
    assert len(runs) == trials
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ray_trial_id"] for r in runs}) == trials
    for run in runs:
        run_id = run.info.run_id
        steps = [m.step for m in client.get_metric_history(run_id, "test_error")]
        assert sorted(steps) == list(range(1, epochs + 1)), run.info.run_name
        for key in FINAL_KEYS:
            assert len(client.get_metric_history(run_id, key)) == 1, (run.info.run_name, key)
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.json", "curves.parquet"} <= artifacts
    return runs


@pytest.mark.slow
def test_half_made_run_and_half_finished_finish_complete_the_same_run(
    tmp_path: Path, mlflow_server, sweep_data_root: Path
) -> None:
    """Fault 4: params, then config.json, then curves.parquet each fail once."""
    experiment = "half-made"
    env = fault_env(tmp_path / "faults", "fail_params", "fail_config_json", "fail_curves")
    result = launch(
        "smoke",
        *TINY_SWEEP,
        "--limit=1",
        "--max-failures=4",
        "--checkpoint-interval=0",
        f"--tracking-uri={mlflow_server.uri}",
        f"--experiment={experiment}",
        f"--storage={tmp_path / 'results'}",
        f"--data-root={sweep_data_root}",
        env=env,
    )
    assert result.returncode == 0, explain(result)
    fired = sorted(p.name for p in (tmp_path / "faults").glob("fired-*"))
    assert fired == ["fired-config", "fired-curves", "fired-params"]
    client = MlflowClient(mlflow_server.uri)
    (run,) = assert_one_clean_run_per_trial(client, experiment, trials=1, epochs=2)
    assert run.data.tags["attempts"] == "4"  # three failed attempts, all into this run
    # The params and config.json completed by the retries: every key, the same values.
    nested = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json")).read_text())
    config = TrialConfig.from_dict(nested)
    assert run.data.params == {k: str(v) for k, v in config.to_flat_dict().items()}
    for key in [k for k in run.data.metrics if k.startswith("curve/")]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), key  # the curves were not logged twice


@contextlib.contextmanager
def served(storage: Path, tmp_path: Path) -> Iterator[MlflowClient]:
    """Yield a client of the launcher's store, served again (its artifacts need a server)."""
    with tracking_server(
        f"sqlite:///{storage}/mlflow.db", storage / "mlartifacts", tmp_path / "browse.log"
    ) as server:
        yield MlflowClient(server.uri)


def launcher_server(stdout: Path) -> tuple[str, int]:
    """Return the URI and port of the launcher's own mlflow server, read from its output."""
    found = re.search(r"MLflow: (http://127\.0\.0\.1:(\d+))", stdout.read_text())
    return (found.group(1), int(found.group(2))) if found else None


def server_group(launcher: int, port: int) -> int | None:
    """Return the process group of the launcher's mlflow server on `port`."""
    found = children_matching(launcher, f"--port {port}")
    return os.getpgid(found[0]) if found else None


@pytest.mark.slow
def test_tracking_server_killed_and_stopped_mid_sweep(
    tmp_path: Path, sweep_data_root: Path
) -> None:
    """Fault 1: the launcher's own server is SIGKILLed, later SIGSTOPped for 60 s."""
    faults, storage = tmp_path / "faults", tmp_path / "results"
    env = fault_env(faults, "hold_before_epoch=2", "hold_before_epoch=3")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    tiny = [*[t for t in TINY_SWEEP if not t.startswith("optim.epochs=")], "optim.epochs=3"]
    common = [f"--storage={storage}", f"--data-root={sweep_data_root}"]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        launcher = subprocess.Popen(
            [*LAUNCH, "smoke", *tiny, "--limit=2", *common],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        _, port = wait_for(lambda: launcher_server(out), "the launcher's server", 180)
        wait_for(lambda: len(held(faults, 2)) == 2, "both trials to reach epoch 2")
        group = server_group(launcher.pid, port)
        os.killpg(group, signal.SIGKILL)
        (faults / "release-2").touch()
        wait_for(lambda: "is back" in err.read_text(), "the server's restart", 240)
        wait_for(lambda: len(held(faults, 3)) == 2, "both trials to reach epoch 3")
        group = server_group(launcher.pid, port)  # the restarted server, same port
        os.killpg(group, signal.SIGSTOP)
        (faults / "release-3").touch()
        time.sleep(STOP_SECONDS)
        os.killpg(group, signal.SIGCONT)
        code = launcher.wait(600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    log = f"stdout:\n{out.read_text()[-3000:]}\nstderr:\n{err.read_text()[-3000:]}"
    assert code == 0, log
    assert "2 of 2 trials finished" in out.read_text(), log
    assert err.read_text().count("restarting it on the same address") == 1, log
    with served(storage, tmp_path) as client:
        assert_one_clean_run_per_trial(client, "smoke", trials=2, epochs=3)


@pytest.mark.slow
def test_launcher_killed_then_resumed(tmp_path: Path, sweep_data_root: Path) -> None:
    """Fault 2: SIGKILL of the launcher mid-sweep (no handler runs), then --resume."""
    faults, storage = tmp_path / "faults", tmp_path / "results"
    common = [f"--storage={storage}", f"--data-root={sweep_data_root}"]
    out = tmp_path / "first.log"
    with open(out, "w") as log:
        launcher = subprocess.Popen(
            [*LAUNCH, "smoke", *TINY_SWEEP, "--limit=3", "--max-concurrent=1", *common],
            cwd=REPO,
            env=fault_env(faults, "hold_before_epoch=2"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        uri, _ = wait_for(lambda: launcher_server(out), "the launcher's server", 180)
        client = MlflowClient(uri)
        ((first, _),) = wait_for(lambda: held(faults, 2), "the first trial at epoch 2")
        (faults / f"release-2-{first}").touch()
        wait_for(
            lambda: [n for n, _ in held(faults, 2) if n != first], "the second trial at epoch 2"
        )
        before = {r.data.tags["ray_trial_id"]: r for r in runs_of(client, "smoke")}
        launcher.send_signal(signal.SIGKILL)
        assert launcher.wait(60) == -signal.SIGKILL
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    statuses = sorted(r.info.status for r in before.values())
    assert statuses == ["FINISHED", "RUNNING"], out.read_text()[-3000:]

    result = launch("smoke", "--resume", *common)  # no faults armed this time
    assert result.returncode == 0, explain(result)
    assert "3 of 3 trials finished" in result.stdout
    with served(storage, tmp_path) as client:
        runs = assert_one_clean_run_per_trial(client, "smoke", trials=3, epochs=2)
    after = {r.data.tags["ray_trial_id"]: r for r in runs}
    for trial_id, run in before.items():
        assert after[trial_id].info.run_id == run.info.run_id  # continued, not duplicated
        if run.info.status == "FINISHED":  # not redone
            assert after[trial_id].info.end_time == run.info.end_time
            assert "attempts" not in after[trial_id].data.tags
        else:  # left RUNNING by the dead launcher: continued by the resumed sweep
            assert after[trial_id].data.tags["attempts"] == "2"


def descends_from(pid: int, ancestor: int) -> bool:
    """Return True if `ancestor` is `pid` or one of its ancestors."""
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent_pid(pid)
    return False


@pytest.mark.slow
def test_worker_node_dies_mid_trial(tmp_path: Path, mlflow_server, sweep_data_root: Path) -> None:
    """Fault 3: the worker node of a two-node cluster is killed while a trial runs on it."""
    faults, experiment = tmp_path / "faults", "node-dies"
    env = fault_env(
        faults,
        "hold_before_epoch=2",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
    )
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    head = ["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false"]
    head += ["--temp-dir", temp_dir]
    worker_args = ["--address", f"127.0.0.1:{port}", "--num-cpus", "1"]
    cluster = [
        f"--address=127.0.0.1:{port}",
        f"--tracking-uri={mlflow_server.uri}",
        f"--experiment={experiment}",
        f"--storage={tmp_path / 'results'}",
        f"--data-root={sweep_data_root}",
    ]
    try:
        with (
            ray_node(head, env, tmp_path / "head.log"),
            ray_node(worker_args, env, tmp_path / "worker.log") as worker,
        ):
            out = tmp_path / "launcher.log"
            with open(out, "w") as log:
                launcher = subprocess.Popen(
                    [
                        *LAUNCH,
                        "smoke",
                        *TINY_SWEEP,
                        "--limit=2",
                        "--checkpoint-interval=0",
                        *cluster,
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                trials = wait_for(lambda: len(held(faults, 2)) == 2 and held(faults, 2), "2 held")
                on_worker = [n for n, pid in trials if descends_from(pid, worker.pid)]
                assert len(on_worker) == 1, trials
                os.killpg(worker.pid, signal.SIGKILL)  # the node and every process it started
                for name, pid in trials:
                    if name == on_worker[0]:
                        wait_for(lambda pid=pid: parent_pid(pid) == 0, "the trial's death", 60)
                (faults / "release-2").touch()
                code = launcher.wait(600)
            finally:
                if launcher.poll() is None:
                    launcher.kill()
                    launcher.wait()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert code == 0, out.read_text()[-3000:]
    client = MlflowClient(mlflow_server.uri)
    runs = assert_one_clean_run_per_trial(client, experiment, trials=2, epochs=2)
    by_name = {r.info.run_name: r for r in runs}
    moved, stayed = by_name.pop(on_worker[0]), next(iter(by_name.values()))
    assert moved.data.tags["attempts"] == "2"  # retried into the same run
    assert moved.data.tags["ray_node_id"] == stayed.data.tags["ray_node_id"]  # on the head
