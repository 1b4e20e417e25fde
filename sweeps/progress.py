"""Progress of a sweep: trials finished, running, failed, elapsed time and an ETA.

The same line two ways: printed by the launcher while the sweep runs (ProgressLine, a Tune
callback), and read by `launch.py GRID --status` from the state Tune keeps in STORAGE/GRID,
from another shell, for a sweep that is running or stopped. The state files are read as plain
JSON: nothing in them is unpickled or run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs
from ray import tune

STATE_GLOB = "experiment_state-"  # Tune's snapshot of a sweep: experiment_state-<session>.json
FINISHED, FAILED, RUNNING = "TERMINATED", "ERROR", "RUNNING"
# The launcher prints the line on every trial event, and at least this often in between.
PROGRESS_EVERY_S = 60.0


@dataclass
class Progress:
    """Counts and times of one sweep at one moment."""

    total: int
    finished: int = 0
    running: int = 0
    failed: int = 0
    elapsed_s: float = 0.0  # since the sweep (or this session of it) started
    durations_s: list[float] = field(default_factory=list)  # of the finished trials
    running_s: list[float] = field(default_factory=list)  # how long each running trial has run

    @property
    def pending(self) -> int:
        """Return the trials not yet started (or paused, waiting for resources)."""
        return self.total - self.finished - self.running - self.failed

    def eta_s(self) -> float | None:
        """Return the seconds left: finished trials' mean duration over the trials to go.

        The work left is one mean duration per running or pending trial, less what the
        running ones have done; it is shared by as many trials at once as run now. None
        before the first trial finishes or when nothing runs (a stopped sweep).
        """
        if not self.durations_s or self.running == 0:
            return None
        mean = sum(self.durations_s) / len(self.durations_s)
        left = mean * (self.running + self.pending)
        left -= sum(min(elapsed, mean) for elapsed in self.running_s)
        return max(left, 0.0) / self.running

    def line(self) -> str:
        """Return the one-line summary: counts, elapsed time and ETA."""
        eta = self.eta_s()
        done = self.finished == self.total
        eta_text = "done" if done else ("unknown" if eta is None else format_duration(eta))
        return (
            f"progress: {self.finished} finished, {self.running} running, {self.failed} failed, "
            f"{self.total} total; elapsed {format_duration(self.elapsed_s)}, ETA {eta_text}"
        )


def format_duration(seconds: float) -> str:
    """Return seconds as 42s, 3m05s or 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine(tune.Callback):
    """Print the progress line after each trial event, and every PROGRESS_EVERY_S seconds."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.started = time.monotonic()
        self.last_printed = -math.inf
        self.trial_started: dict[str, float] = {}  # first start of each trial, this session
        self.durations: dict[str, float] = {}  # of the trials finished in this session

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Remember when a trial started (a retry keeps its first start)."""
        self.trial_started.setdefault(trial.trial_id, time.monotonic())
        self._print(trials, {trial.trial_id: RUNNING})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Record a finished trial's duration."""
        started = self.trial_started.get(trial.trial_id, self.started)
        self.durations[trial.trial_id] = time.monotonic() - started
        self._print(trials, {trial.trial_id: FINISHED})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Count a trial that failed for good."""
        self._print(trials, {trial.trial_id: FAILED})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Print the line when it has not been printed for a while."""
        if time.monotonic() - self.last_printed >= self.every_s:
            self._print(trials)

    def progress(self, trials: list, changed: dict[str, str] | None = None) -> Progress:
        """Return the progress of these trials (`changed`: statuses Tune sets after callbacks)."""
        now = time.monotonic()
        statuses = [(changed or {}).get(t.trial_id, t.status) for t in trials]
        running = [
            t.trial_id for t, status in zip(trials, statuses, strict=True) if status == RUNNING
        ]
        return Progress(
            total=len(trials),
            finished=statuses.count(FINISHED),
            running=len(running),
            failed=statuses.count(FAILED),
            elapsed_s=now - self.started,
            durations_s=list(self.durations.values()),
            running_s=[now - self.trial_started.get(i, now) for i in running],
        )

    def _print(self, trials: list, changed: dict[str, str] | None = None) -> None:
        self.last_printed = time.monotonic()
        print(self.progress(trials, changed).line(), flush=True)


def read_progress(path: str, now: float | None = None) -> tuple[Progress, float]:
    """Return the progress in the newest Tune state at `path` and when that state was saved.

    Raise FileNotFoundError if there is no sweep there. Tune saves its state every few
    seconds while a sweep runs, so a running sweep is seen as of its last save.
    """
    filesystem, root = (
        pyarrow.fs.FileSystem.from_uri(path)
        if "://" in path
        else (
            pyarrow.fs.LocalFileSystem(),
            path,
        )
    )
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    states = [
        info
        for info in filesystem.get_file_info(selector)
        if info.base_name.startswith(STATE_GLOB) and info.base_name.endswith(".json")
    ]
    if not states:
        raise FileNotFoundError(f"no sweep at {path}: it has no Tune state ({STATE_GLOB}*.json)")
    newest = max(states, key=lambda info: info.mtime_ns or 0)
    with filesystem.open_input_stream(newest.path) as stream:
        state = json.loads(stream.readall())
    saved = (newest.mtime_ns or 0) / 1e9
    now = time.time() if now is None else now
    return progress_of_state(state, saved, now), saved


def progress_of_state(state: dict[str, Any], saved: float, now: float) -> Progress:
    """Return the progress in a Tune experiment state (a running sweep's clock runs to now)."""
    trials = [
        (json.loads(trial_state), json.loads(metadata))
        for trial_state, metadata in state["trial_data"]
    ]
    statuses = [trial["status"] for trial, _ in trials]
    running = statuses.count(RUNNING)
    started = float(state.get("stats", {}).get("start_time") or saved)
    # A stopped sweep's clock stopped at its last save.
    elapsed = (now if running else saved) - started
    durations, running_s = [], []
    for (_, metadata), status in zip(trials, statuses, strict=True):
        result = _plain_last_result(metadata)
        seconds = float(result.get("time_total_s", 0.0))
        if status == FINISHED:
            durations.append(seconds)
        elif status == RUNNING:
            # Seconds at its last report, plus the time since then.
            reported = float(result.get("timestamp", saved))
            running_s.append(seconds + max(now - reported, 0.0))
    return Progress(
        total=len(trials),
        finished=statuses.count(FINISHED),
        running=running,
        failed=statuses.count(FAILED),
        elapsed_s=max(elapsed, 0.0),
        durations_s=durations,
        running_s=running_s,
    )


def _plain_last_result(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return a trial's last reported result if it is plain JSON (else nothing)."""
    result = metadata.get("last_result")
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            return {}
    return result if isinstance(result, dict) else {}


def print_status(path: str) -> None:
    """Print where the sweep at `path` stands, as of its last saved state."""
    progress, saved = read_progress(path)
    when = time.strftime("%H:%M:%S", time.localtime(saved))
    print(f"sweep at {path}, state saved {when} ({time.time() - saved:.0f} s ago)")
    print(progress.line())
