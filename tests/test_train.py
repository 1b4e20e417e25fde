"""run_trial end to end on CPU: learning, checkpoints, bit-identical resume, failures, indices."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from iterconv_faults import InjectedFault

from models import parameter_count
from pipeline.checkpoint import CHECKPOINT_NAME
from pipeline.config import TrialConfig, network_shape
from pipeline.tasks import task_for
from pipeline.train import (
    DivergenceError,
    TrialResult,
    build_trial,
    evaluate,
    finish_trial,
    lr_factor,
    main,
    resolve_device,
    run_trial,
    train_epoch,
)
from vocabulary import INDEX_NAMES

EPOCH_KEYS = {
    "epoch",
    "train_loss",
    "train_error",
    "test_loss",
    "test_error",
    "lr",
    "images_per_second",
    "epoch_seconds",
}
FINAL_KEYS = {
    "final_test_error",
    "final_test_loss",
    "final_train_loss",
    "epochs",
    "train_seconds",
    "parameters",
    "chance_error",
}
# Digitclutter also counts digits: the fraction of an image's n digits not in the top n.
DIGIT_KEYS = {
    "epoch": {"test_digit_error"},
    "final": {"final_test_digit_error", "chance_digit_error"},
}


def expected_keys(task, kind: str) -> set[str]:
    """Return the metric keys of an epoch or of a trial's end for this task."""
    keys = EPOCH_KEYS if kind == "epoch" else FINAL_KEYS
    return keys | DIGIT_KEYS[kind] if task.multilabel else keys


INDEX_KEYS = {f"{i}{s}" for i in ("ci", "ri", "di") for s in ("", "_stage1", "_stage2", "_stage3")}

# Digitclutter-3, small enough for a loaded CPU; the cache is shared by every trial below.
# A high learning rate learns fastest here: over seeds 0-3 the test error ends at 0.65-0.83.
CLUTTER = {
    "data.dataset": "digitclutter-3",
    "data.clutter_train_images": 3000,
    "data.clutter_test_images": 500,
    "data.index_examples": 200,
    "model.width": 8,
    "model.blocks_per_stage": 2,
    "optim.batch_size": 32,
    "optim.lr": 2.4,
    "optim.epochs": 4,
    "run.device": "cpu",
    "run.extra_evaluations": 4,
    # One thread: on a shared, loaded machine two threads can run ten times slower.
    "run.threads": 1,
}
# For the mechanics (checkpoints, resume, failures), not for learning: 4 steps per epoch.
TINY_TRIAL = {
    "data.train_size": 256,
    "data.index_examples": 100,
    "optim.batch_size": 64,
    "optim.lr": 0.4,
    "optim.epochs": 2,
}


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """Give the rest of the test session back its torch thread count (run.threads sets it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clutter_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return a data root whose Digitclutter cache all trials of this module share."""
    return str(tmp_path_factory.mktemp("data"))


def clutter_config(root: str, *updates: dict) -> TrialConfig:
    """Return the Digitclutter-3 trial config under root, flat-key updates applied in order."""
    merged = {**CLUTTER, "data.root": root}
    for update in updates:
        merged.update(update)
    return TrialConfig.from_dict(merged)


class Reports:
    """A report callback that records each call and the checkpoint epoch it points to."""

    def __init__(self, copy_after_epoch_1: Path | None = None) -> None:
        self.calls: list[tuple[dict[str, float], str | None, int | None]] = []
        self.copy_after_epoch_1 = copy_after_epoch_1  # where to copy epoch 1's checkpoint

    def __call__(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        saved_epoch = None
        if checkpoint_dir is not None:
            saved_epoch = checkpoint(Path(checkpoint_dir))["epoch"]
            if self.copy_after_epoch_1 is not None and metrics["epoch"] == 1:
                shutil.copy(Path(checkpoint_dir) / CHECKPOINT_NAME, self.copy_after_epoch_1)
        self.calls.append((metrics, checkpoint_dir, saved_epoch))


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Return True when two metric dicts are equal, NaN counting as equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def checkpoint(directory: Path) -> dict:
    """Return the checkpoint stored in a directory."""
    return torch.load(directory / CHECKPOINT_NAME, weights_only=False)


def assert_valid_result(result: TrialResult, epochs: int) -> None:
    """Check a result's keys, ranges and curves."""
    assert set(result.metrics) == expected_keys(result.config.task, "final")
    assert set(result.indices) == INDEX_KEYS
    # A stage's indices are defined where its unperturbed error on the index examples (the
    # readout curve's last step) is below chance; the examples are a subset of the test split,
    # so the final test error alone cannot tell.
    readout = result.curves[result.curves["curve"] == "readout"]
    for stage, errors in readout.sort_values("step").groupby("stage")["error"]:
        values = [result.indices[f"{name}_stage{stage}"] for name in INDEX_NAMES]
        if errors.iloc[-1] < result.config.task.chance_error:
            assert all(0.0 <= v <= 1.0 for v in values), result.indices
        else:  # a network at chance has undefined indices
            assert all(math.isnan(v) for v in values), result.indices
    assert result.metrics["epochs"] == epochs
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert all(set(h) == expected_keys(result.config.task, "epoch") for h in result.history)
    assert all(math.isfinite(v) for h in result.history for v in h.values())
    assert list(result.curves.columns) == ["stage", "curve", "step", "error"]
    assert set(result.curves["stage"]) == {1, 2, 3}
    assert set(result.curves["curve"]) == {"readout", "dropout", "extra"}
    assert same(result.summary(), {**result.metrics, **result.indices})


@pytest.fixture(scope="module")
def uninterrupted(
    clutter_root: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrialResult, Path, Reports]:
    """Return an uninterrupted 2-epoch tiny Digitclutter-3 trial, its checkpoint dir, reports.

    The reports keep a copy of the epoch-1 checkpoint as `<dir>/epoch1/checkpoint.pt`.
    """
    directory = tmp_path_factory.mktemp("uninterrupted")
    (directory / "epoch1").mkdir()
    reports = Reports(copy_after_epoch_1=directory / "epoch1" / CHECKPOINT_NAME)
    result = run_trial(clutter_config(clutter_root, TINY_TRIAL), reports, str(directory))
    return result, directory, reports


def assert_same_training_state(directory: Path, reference_dir: Path) -> None:
    """Check that two final checkpoints hold bit-identical weights and optimiser state."""
    final, expected = checkpoint(directory), checkpoint(reference_dir)
    assert final["epoch"] == expected["epoch"]
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    for key, state in expected["optimizer"]["state"].items():
        buffer = final["optimizer"]["state"][key]["momentum_buffer"]
        assert torch.equal(buffer, state["momentum_buffer"]), key
    assert final["scheduler"] == expected["scheduler"]


def test_digitclutter_trial_learns(clutter_root: str) -> None:
    result = run_trial(clutter_config(clutter_root))
    assert_valid_result(result, epochs=CLUTTER["optim.epochs"])
    assert task_for("digitclutter-3").chance_error == pytest.approx(1 - 1 / 120)
    # Guessing gets 4 of 500 test images right (sd 2); 50 right is far beyond luck.
    assert result.metrics["final_test_error"] < 0.9, result.history
    # Predicting the base rate 3/10 for every digit gives a binary cross-entropy of H(0.3) = 0.61.
    base_rate_loss = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert result.metrics["final_test_loss"] < base_rate_loss - 0.1, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_trial_reports_after_each_checkpoint(uninterrupted) -> None:
    result, directory, reports = uninterrupted
    assert_valid_result(result, epochs=2)
    # One report per epoch, each after that epoch's checkpoint was written.
    assert [metrics for metrics, _, _ in reports.calls] == result.history
    assert [(d, e) for _, d, e in reports.calls] == [(str(directory), 1), (str(directory), 2)]
    assert checkpoint(directory)["epoch"] == 2
    assert not list(directory.glob("*.tmp"))
    # Warm-up to the peak lr (0.4 * 64/128) during epoch 1, cosine to ~0 at the end of epoch 2.
    assert result.history[0]["lr"] == pytest.approx(0.2)
    assert 0 < result.history[1]["lr"] < 0.1


def test_resume_after_injected_fault_is_bit_identical(
    uninterrupted, clutter_root: str, tmp_path: Path, inject_fault
) -> None:
    reference, reference_dir, _ = uninterrupted
    config = clutter_config(clutter_root, TINY_TRIAL)
    inject_fault(2)
    reports = Reports()
    with pytest.raises(InjectedFault, match="epoch 2 starts"):
        run_trial(config, reports, str(tmp_path))
    assert checkpoint(tmp_path)["epoch"] == 1
    assert len(reports.calls) == 1
    # The retry resumes from epoch 1, so the fault is not raised again.
    resumed = run_trial(config, reports, str(tmp_path))
    assert [m["epoch"] for m, _, _ in reports.calls] == [1, 2]
    assert_same_training_state(tmp_path, reference_dir)
    losses = ("train_loss", "train_error", "test_loss", "test_error", "lr")
    assert [[h[k] for k in losses] for h in resumed.history] == [
        [h[k] for k in losses] for h in reference.history
    ]
    assert same(resumed.indices, reference.indices)
    pd.testing.assert_frame_equal(resumed.curves, reference.curves)


def test_resume_from_a_copied_epoch_1_checkpoint_is_bit_identical(
    uninterrupted, clutter_root: str, tmp_path: Path
) -> None:
    reference, reference_dir, _ = uninterrupted
    shutil.copy(reference_dir / "epoch1" / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    assert checkpoint(tmp_path)["epoch"] == 1
    reports = Reports()
    resumed = run_trial(clutter_config(clutter_root, TINY_TRIAL), reports, str(tmp_path))
    assert [m["epoch"] for m, _, _ in reports.calls] == [2]
    assert_same_training_state(tmp_path, reference_dir)
    assert resumed.history[0] == reference.history[0]  # restored, timings included
    assert resumed.summary()["final_test_error"] == reference.summary()["final_test_error"]
    assert same(resumed.indices, reference.indices)


def test_checkpoint_at_the_last_epoch_goes_straight_to_the_indices(
    uninterrupted, clutter_root: str, tmp_path: Path
) -> None:
    reference, reference_dir, _ = uninterrupted
    shutil.copy(reference_dir / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    reports = Reports()
    result = run_trial(clutter_config(clutter_root, TINY_TRIAL), reports, str(tmp_path))
    assert reports.calls == []
    assert result.history == reference.history
    assert result.summary() == reference.summary()


def test_checkpoint_of_another_trial_is_refused(
    uninterrupted, clutter_root: str, tmp_path: Path
) -> None:
    _, reference_dir, _ = uninterrupted
    shutil.copy(reference_dir / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"another trial: optim\.lr=0\.4 there, 0\.3 here"):
        run_trial(clutter_config(clutter_root, TINY_TRIAL, {"optim.lr": 0.3}), None, str(tmp_path))


def test_a_diverged_trial_is_a_result_at_chance_with_undefined_indices(
    clutter_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = clutter_config(clutter_root, TINY_TRIAL, {"optim.lr": 1e30, "optim.warmup_epochs": 0})
    result = run_trial(config)  # returns: Tune must not retry a bit-exact repeat of this
    assert result.diverged and result.diverged_epoch == 1
    task = config.task
    assert result.metrics["final_test_error"] == task.chance_error
    assert result.metrics["final_test_digit_error"] == task.chance_digit_error
    assert result.metrics["diverged_epoch"] == 1 and result.metrics["epochs"] == 0
    assert set(result.indices) == INDEX_KEYS
    assert all(math.isnan(v) for v in result.indices.values())
    assert result.curves.empty
    assert re.search(r"diverged at epoch 1, step \d+ of 4: loss (nan|inf)", caplog.text)


def test_non_finite_loss_names_epoch_and_step(clutter_root: str) -> None:
    config = clutter_config(clutter_root, TINY_TRIAL, {"optim.lr": 1e30, "optim.warmup_epochs": 0})
    trial = build_trial(config, torch.device("cpu"))
    with pytest.raises(DivergenceError, match=r"diverged at epoch 1, step \d+ of 4") as error:
        train_epoch(trial, 1)
    assert error.value.epoch == 1


def test_evaluation_runs_in_full_precision_when_training_is_mixed(clutter_root: str) -> None:
    # On CUDA training runs under bf16 autocast; here bf16 autocast on the CPU stands in.
    config = clutter_config(
        clutter_root, TINY_TRIAL, {"optim.epochs": 1, "data.index_examples": 32}
    )
    trial = build_trial(config, torch.device("cpu"))
    trial.step.mixed_precision = True
    seen: list[tuple[str, bool, torch.dtype]] = []
    phase = ["train"]
    trial.model.head.register_forward_hook(
        lambda module, inputs, output: seen.append(
            (phase[0], torch.is_autocast_enabled("cpu"), output.dtype)
        )
    )
    train_epoch(trial, 1)
    phase[0] = "evaluate"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's bf16 region
        evaluate(trial)
        phase[0] = "finish"
        finish_trial(trial, [run_epoch_metrics()])
    by_phase = {p: {(enabled, dtype) for q, enabled, dtype in seen if q == p} for p, *_ in seen}
    assert by_phase["train"] == {(True, torch.bfloat16)}
    assert by_phase["evaluate"] == {(False, torch.float32)}
    assert by_phase["finish"] == {(False, torch.float32)}  # test error, curves and indices


def run_epoch_metrics() -> dict[str, float]:
    """Return the history entry finish_trial reads (train loss and epoch time)."""
    return {"train_loss": 1.0, "epoch_seconds": 1.0}


def test_coupled_icr_trial_runs_end_to_end(clutter_root: str, tmp_path: Path) -> None:
    config = clutter_config(
        clutter_root,
        TINY_TRIAL,
        {
            "model.block": "icr",
            "model.recurrent_init": True,
            "coupling.lam": 0.9,
            "optim.epochs": 1,
            "optim.lr": 0.1,
        },
    )
    result = run_trial(config, checkpoint_dir=str(tmp_path))
    assert_valid_result(result, epochs=1)
    assert "spectral.v_conv2" in "".join(checkpoint(tmp_path)["model"])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_torchvision_format_trial_runs_end_to_end(
    dataset: str,
    dataset_writer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="iterconv.train")
    root = dataset_writer(dataset, tmp_path / "data", n_train=200, n_test=100)
    config = TrialConfig.from_dict(
        {
            "data": {"dataset": dataset, "root": str(root)},
            "model": {"width": 4, "blocks_per_stage": 2},
            "optim": {"batch_size": 32, "epochs": 2, "lr": 0.2},
            "run": {"device": "cpu", "extra_evaluations": 2, "threads": 1},
        }
    )
    result = run_trial(config)
    assert_valid_result(result, epochs=2)
    shape = network_shape(config)
    assert shape["in_channels"] == (3 if dataset == "cifar10" else 1)
    assert result.metrics["parameters"] == parameter_count(config.model, **shape)
    # Nothing printed; one log line per epoch.
    assert capsys.readouterr() == ("", "")
    lines = [r.getMessage() for r in caplog.records if r.name == "iterconv.train"]
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]


def test_cli_runs_a_trial_and_prints_its_summary(
    dataset_writer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = dataset_writer("mnist", tmp_path / "data", n_train=200, n_test=100)
    overrides = [
        "data.dataset=mnist",
        f"data.root={root}",
        "model.width=4",
        "model.blocks_per_stage=2",
        "optim.epochs=1",
        "optim.batch_size=50",
        "run.device='cpu'",
        "run.threads=1",
    ]
    assert main([*overrides, "--checkpoint-dir", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == FINAL_KEYS | INDEX_KEYS
    assert summary["epochs"] == 1
    assert (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_lr_schedule_warms_up_linearly_then_decays_as_a_cosine() -> None:
    factors = [lr_factor(step, warmup_steps=4, total_steps=12) for step in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[8] == pytest.approx(0.5)
    assert all(a > b for a, b in itertools.pairwise(factors[4:]))
    assert 0 < factors[-1] < 0.05
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0


def test_cli_rejects_bad_overrides_with_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model.width=wide"])
    assert exit_info.value.code == 2
    assert "model.width='wide'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"run\.device='cuda': CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
