"""Damaged and hostile checkpoints: the error names the file, the previous one is kept and used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import CHECKPOINT_NAME, CorruptCheckpointError, previous_checkpoint
from pipeline.config import TrialConfig
from pipeline.train import run_trial

# Digitclutter-3 at its smallest: 4 steps an epoch, three epochs.
CONFIG = {
    "data.dataset": "digitclutter-3",
    "data.clutter_train_images": 256,
    "data.clutter_test_images": 64,
    "data.index_examples": 64,
    "model.width": 8,
    "model.blocks_per_stage": 2,
    "optim.batch_size": 64,
    "optim.epochs": 3,
    "run.device": "cpu",
    "run.threads": 1,
    "run.extra_evaluations": 2,
}


class CrashError(RuntimeError):
    """The trial process dies right after an epoch's checkpoint."""


def crash_after(epoch: int, seen: list[int]):
    """Return a report callback recording epochs that raises CrashError after `epoch`."""

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        seen.append(int(metrics["epoch"]))
        if metrics["epoch"] == epoch:
            raise CrashError(f"after epoch {epoch}")

    return report


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrialConfig:
    """Return the trial config, its Digitclutter cache shared by this module's tests."""
    return TrialConfig.from_dict({**CONFIG, "data.root": str(tmp_path_factory.mktemp("data"))})


def crashed_trial(config: TrialConfig, directory: Path) -> Path:
    """Run the trial until it crashes after epoch 2; return its checkpoint path."""
    with pytest.raises(CrashError):
        run_trial(config, crash_after(2, []), str(directory))
    path = directory / CHECKPOINT_NAME
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert torch.load(previous_checkpoint(path), weights_only=True)["epoch"] == 1
    return path


def test_damaged_checkpoint_is_named_and_the_previous_one_resumes(
    config: TrialConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture, one_thread: None
) -> None:
    path = crashed_trial(config, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="iterconv.train"):
        result = run_trial(config, crash_after(0, seen), str(tmp_path))
    assert f"damaged checkpoint {path}" in caplog.text
    assert seen == [2, 3]  # resumed after epoch 1, from checkpoint.previous.pt
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_two_damaged_checkpoints_name_both_files(
    config: TrialConfig, tmp_path: Path, one_thread: None
) -> None:
    path = crashed_trial(config, tmp_path)
    for damaged in (path, previous_checkpoint(path)):
        damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError) as raised:
        run_trial(config, None, str(tmp_path))
    message = str(raised.value)
    assert f"damaged checkpoint {path}" in message
    assert f"damaged checkpoint {previous_checkpoint(path)}" in message


class CreatesAFile:
    """A pickle payload: loading it with a plain unpickler would call open(path, "w")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_checkpoint_that_would_run_code_is_refused(
    config: TrialConfig, tmp_path: Path, one_thread: None
) -> None:
    path = crashed_trial(config, tmp_path)
    planted = tmp_path / "planted-by-checkpoint"
    for hostile in (path, previous_checkpoint(path)):
        state = torch.load(hostile, weights_only=True)
        state["history"].append({"epoch": CreatesAFile(planted)})
        torch.save(state, hostile)
    with pytest.raises(CorruptCheckpointError, match=rf"damaged checkpoint {path}: .*"):
        run_trial(config, None, str(tmp_path))
    assert not planted.exists()
