"""Helpers of the system tests (SLURM, `ray submit` over SSH, the MLflow UI in Chromium).

Each of those tests runs the real program from its Debian package; `.ci/run` installs them
with tests/system/install-deps.sh. Where they are absent the test skips and says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = "tests/system/install-deps.sh"
# A smoke trial small enough for the tests of the plumbing, not of the figures.
TINY = [
    "optim.epochs=2",
    "data.clutter_train_images=512",
    "data.clutter_test_images=128",
    "data.index_examples=64",
    "model.blocks_per_stage=2",
    "run.extra_evaluations=2",
]


def require(*programs: str, packages: str) -> None:
    """Skip the test, naming the Debian packages, unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: install Debian {packages} ({INSTALL})")


def require_root(what: str) -> None:
    """Skip the test unless it runs as root (the daemons it starts need it)."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root here (CI runs as root)")


def system_env(**extra: str) -> dict[str, str]:
    """Return the environment of a launched program: no inherited sweep defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITERCONV_", "RAY_ADDRESS"))}
    # The launcher and Ray's workers import this checkout, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


@contextlib.contextmanager
def daemon(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator:
    """Run a foreground daemon until the with-block ends; then stop it (its group) for sure."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        time.sleep(0.3)
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{log.read_text()}")
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children: TERM, then KILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    """Return check()'s first truthy value, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def processes_mentioning(text: str, pids: bool = False) -> list:
    """Return the command lines (or pids) of live processes that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in line:
                found.append(int(entry.name) if pids else line.strip())
    return found


def python_bin() -> Path:
    """Return the folder of this Python's scripts (ray, mlflow)."""
    return Path(sys.executable).parent
