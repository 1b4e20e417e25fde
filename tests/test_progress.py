"""The progress line of a sweep: counts, ETA, and reading Tune's saved state without running it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sweeps.progress import Progress, format_duration, progress_of_state, read_progress


def test_eta_shares_the_work_left_among_the_running_trials() -> None:
    progress = Progress(
        total=10, finished=2, running=2, durations_s=[100.0, 300.0], running_s=[50.0, 250.0]
    )
    # mean 200 s; 2 running + 6 pending = 8 trials of work, less 50 + 200 done, over 2 slots
    assert progress.pending == 6
    assert progress.eta_s() == pytest.approx((8 * 200 - 50 - 200) / 2)
    assert progress.line() == (
        "progress: 2 finished, 2 running, 0 failed, 10 total; elapsed 0s, ETA 11m15s"
    )


def test_eta_is_unknown_before_a_trial_finishes_or_when_nothing_runs() -> None:
    assert Progress(total=4, running=2, running_s=[5.0, 5.0]).eta_s() is None
    stopped = Progress(total=4, finished=1, failed=1, durations_s=[60.0], elapsed_s=4000)
    assert stopped.eta_s() is None
    assert stopped.line().endswith("elapsed 1h06m, ETA unknown")
    done = Progress(total=2, finished=2, durations_s=[1.0, 2.0])
    assert done.line().endswith("ETA done")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"), (-3, "0s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def tune_trial(status: str, result: dict | None) -> list[str]:
    """Return one entry of a Tune state's trial_data: the trial's JSON and its run metadata."""
    metadata = {"last_result": json.dumps(result) if result is not None else None}
    return [json.dumps({"status": status, "trial_id": "x"}), json.dumps(metadata)]


def test_state_of_a_running_sweep(tmp_path: Path) -> None:
    state = {
        "trial_data": [
            tune_trial("TERMINATED", {"time_total_s": 120.0, "timestamp": 900}),
            tune_trial("RUNNING", {"time_total_s": 30.0, "timestamp": 990}),
            tune_trial("ERROR", {"time_total_s": 5.0, "timestamp": 950}),
            tune_trial("PENDING", None),
        ],
        "stats": {"start_time": 800.0},
    }
    progress = progress_of_state(state, saved=995.0, now=1000.0)
    assert (progress.finished, progress.running, progress.failed, progress.total) == (1, 1, 1, 4)
    assert progress.elapsed_s == 200.0
    assert progress.durations_s == [120.0]
    assert progress.running_s == [40.0]  # 30 s at its last report, 10 s ago
    assert progress.eta_s() == pytest.approx(2 * 120 - 40)


def test_read_progress_takes_the_newest_state_and_says_when_there_is_none(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError, match="no sweep at"):
        read_progress(str(tmp_path))
    old = {"trial_data": [tune_trial("RUNNING", None)], "stats": {"start_time": 0}}
    new = {"trial_data": [tune_trial("TERMINATED", {"time_total_s": 1.0})] * 2, "stats": {}}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(old))
    newest = tmp_path / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text(json.dumps(new))
    os.utime(newest, (2e9, 2e9))
    progress, saved = read_progress(str(tmp_path))
    assert saved == 2e9
    assert (progress.finished, progress.total) == (2, 2)
