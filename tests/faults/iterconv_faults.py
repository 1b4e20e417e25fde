"""Test-only faults injected into a trial from outside, so the production config has no hooks.

In the test process, `fail_as_epoch_starts` patches `pipeline.train.run_epoch`; in the trial
processes of a sweep, `sitecustomize.py` beside this file does the same when the environment of
`fault_environment` reaches them (Ray's workers inherit the launcher's environment).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPOCH_VARIABLE = "ITERCONV_FAULT_EPOCH"
MARKER_VARIABLE = "ITERCONV_FAULT_MARKER"
HERE = Path(__file__).resolve().parent


class InjectedFault(RuntimeError):  # noqa: N818 (the name the sweep's logs show)
    """A failure the tests inject as an epoch starts."""


def _first_time(marker: Path | None, fired: list[bool]) -> bool:
    """Return True once: per marker file across processes, else per patch in this process."""
    if marker is None:
        if fired:
            return False
        fired.append(True)
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def fail_as_epoch_starts(epoch: int, marker: Path | None = None) -> Callable[[], None]:
    """Make the next trial raise InjectedFault as `epoch` (1-based) starts, once; return undo."""
    import pipeline.train as train

    original = train.run_epoch
    fired: list[bool] = []

    def run_epoch(trial: Any, current: int) -> dict[str, float]:
        if current == epoch and _first_time(marker, fired):
            raise InjectedFault(f"injected failure as epoch {epoch} starts")
        return original(trial, current)

    train.run_epoch = run_epoch

    def undo() -> None:
        train.run_epoch = original

    return undo


def fault_environment(epoch: int, marker: Path) -> dict[str, str]:
    """Return the environment that makes a sweep's first trial to reach `epoch` fail there once."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {EPOCH_VARIABLE: str(epoch), MARKER_VARIABLE: str(marker), "PYTHONPATH": path}


# Faults of whole sweeps (tests/test_sweep_faults.py): ITERCONV_FAULTS is a comma-separated
# list, each fault once per sweep (a marker file under ITERCONV_FAULT_DIR records that it
# fired, across processes and retries):
#   fail_params          logging a new run's params raises, once
#   fail_config_json     uploading a run's config.json raises, once
#   fail_curves          uploading curves.parquet in TrialRun.finish raises, once (after the
#                        final metrics were logged: a half-finished finish)
#   hold_before_epoch=N  before epoch N of each trial (once per trial): write
#                        DIR/held-N-<run name>-<pid>, then wait for DIR/release-N or
#                        DIR/release-N-<run name>
FAULTS_VARIABLE = "ITERCONV_FAULTS"
FAULT_DIR_VARIABLE = "ITERCONV_FAULT_DIR"
HOLD_TIMEOUT_S = 600.0


def sweep_fault_environment(fault_dir: Path, *faults: str) -> dict[str, str]:
    """Return the environment that arms `faults` in every process of a sweep."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {
        FAULTS_VARIABLE: ",".join(faults),
        FAULT_DIR_VARIABLE: str(fault_dir),
        "PYTHONPATH": path,
    }


def _armed() -> list[str]:
    """Return the faults of ITERCONV_FAULTS."""
    return [f for f in os.environ.get(FAULTS_VARIABLE, "").split(",") if f]


def _fire_once(name: str) -> bool:
    """Return True the first time fault `name` fires in this sweep (atomic across processes)."""
    return _first_time(Path(os.environ[FAULT_DIR_VARIABLE]) / f"fired-{name}", [])


def hold_before_epochs(module: Any) -> None:
    """Wrap pipeline.train.run_epoch: hold each trial before the epochs of hold_before_epoch."""
    holds = {int(f.split("=", 1)[1]) for f in _armed() if f.startswith("hold_before_epoch=")}
    if not holds:
        return
    original = module.run_epoch
    fault_dir = Path(os.environ[FAULT_DIR_VARIABLE])

    def run_epoch(trial: Any, epoch: int) -> dict[str, float]:
        from pipeline.tracking import run_name

        name = run_name(trial.config)
        if epoch in holds and _fire_once(f"hold-{epoch}-{name}"):
            (fault_dir / f"held-{epoch}-{name}-{os.getpid()}").touch()
            releases = (fault_dir / f"release-{epoch}", fault_dir / f"release-{epoch}-{name}")
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while not any(r.exists() for r in releases) and time.monotonic() < deadline:
                time.sleep(0.2)
        return original(trial, epoch)

    module.run_epoch = run_epoch


def fail_run_logging(module: Any) -> None:
    """Wrap pipeline.tracking's params and artifact logging with the armed run faults."""
    armed = _armed()
    log_params = module._log_params
    client_class = module.MlflowClient
    log_artifact = client_class.log_artifact

    def failing_log_params(client: Any, run_id: str, flat: Any) -> None:
        if "fail_params" in armed and _fire_once("params"):
            raise InjectedFault("injected failure logging the run's params")
        log_params(client, run_id, flat)

    def failing_log_artifact(
        self: Any, run_id: str, local_path: str, artifact_path: str | None = None
    ) -> None:
        name = os.path.basename(local_path)
        if name == "config.json" and "fail_config_json" in armed and _fire_once("config"):
            raise InjectedFault("injected failure uploading config.json")
        if name == "curves.parquet" and "fail_curves" in armed and _fire_once("curves"):
            raise InjectedFault("injected failure uploading curves.parquet")
        log_artifact(self, run_id, local_path, artifact_path)

    module._log_params = failing_log_params
    client_class.log_artifact = failing_log_artifact
