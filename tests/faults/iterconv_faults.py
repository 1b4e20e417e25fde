"""Test-only faults injected into a trial from outside, so the production config has no hooks.

In the test process, `fail_as_epoch_starts` patches `pipeline.train.run_epoch`; in the trial
processes of a sweep, `sitecustomize.py` beside this file does the same when the environment of
`fault_environment` reaches them (Ray's workers inherit the launcher's environment).
"""

from __future__ import annotations

import os
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
