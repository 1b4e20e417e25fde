"""Training-step modes, fp32 evaluation, and the calibration the trial and the launcher read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.calibration import CALIBRATION_ENV, cuda_step_mode, load_calibration
from pipeline.config import TrialConfig
from pipeline.steps import TrainStep, sgd_update
from pipeline.tasks import task_for
from pipeline.train import build_trial, evaluate
from sweeps.grids import trial_configs
from sweeps.resources import IMAGES_PER_SECOND, Resources, format_dry_run, gpu_hours

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = {
    "format": 1,
    "device": "cuda",
    "quick": False,
    "gpu": "test GPU (written by the test, not measured)",
    "measured_at": "2026-01-01 00:00 UTC",
    "step_mode": "cuda_graph",
    "images_per_second": {"8": 24000, "16": 18000, "32": 10000, "64": 4000},
    "gpu_share": {"8": 0.125, "16": 0.25, "32": 0.25, "64": 0.5},
}


def tiny_trial(root: Path, **updates: object):
    """Return a CPU trial of a tiny ResNet on the 200-image CIFAR-10 under root."""
    flat = {
        "data.dataset": "cifar10",
        "data.root": str(root),
        "model.width": 4,
        "model.blocks_per_stage": 2,
        "optim.batch_size": 16,
        "optim.epochs": 1,
        "run.device": "cpu",
        **updates,
    }
    return build_trial(TrialConfig.from_dict(flat), torch.device("cpu"))


def test_sgd_update_with_a_tensor_lr_equals_torch_sgd() -> None:
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    reference = [p.clone().requires_grad_() for p in start]
    optimiser = torch.optim.SGD(reference, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ours, buffers = None, None
    for step in range(5):
        grads = [torch.randn_like(p) for p in start]
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        optimiser.param_groups[0]["lr"] = 0.1 * (step + 1)  # a schedule
        if step == 0:  # the first step creates the momentum buffers, as in a warm-up
            optimiser.step()
            ours = [p.detach().clone() for p in reference]
            buffers = [optimiser.state[p]["momentum_buffer"].clone() for p in reference]
            continue
        optimiser.step()
        sgd_update(ours, grads, buffers, torch.tensor(0.1 * (step + 1)), 0.9, 5e-4, True)
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-6, atol=1e-6)


def test_step_modes_are_checked(cifar10_root: Path) -> None:
    trial = tiny_trial(cifar10_root)
    with pytest.raises(ValueError, match=r"'fast'.*allowed are"):
        TrainStep(trial.model, trial.optimizer, None, trial.task, False, "fast")
    with pytest.raises(ValueError, match="'cuda_graph' needs a CUDA device"):
        TrainStep(trial.model, trial.optimizer, None, trial.task, False, "cuda_graph")
    assert trial.step.mode == "eager"  # a CPU trial never reads the calibration


def test_evaluation_is_fp32_even_when_training_uses_bf16(cifar10_root: Path) -> None:
    # bf16 autocast exists on the CPU too: turn it on for training and watch the read-out.
    trial = tiny_trial(cifar10_root)
    trial.step.mixed_precision = True
    dtypes: list[torch.dtype] = []
    trial.model.head.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    inputs, targets = next(iter(trial.train_loader))
    loss, _ = trial.step(inputs, targets)
    assert dtypes == [torch.bfloat16] and torch.isfinite(loss)
    dtypes.clear()
    evaluate(trial)
    assert dtypes and set(dtypes) == {torch.float32}


def test_trial_steps_match_plain_training(cifar10_root: Path) -> None:
    # The step object does what train_epoch did inline: forward, loss, backward, SGD.
    trial, plain = tiny_trial(cifar10_root), tiny_trial(cifar10_root)
    task = task_for("cifar10")
    for inputs, targets in list(trial.train_loader)[:3]:
        loss, _ = trial.step(inputs, targets)
        plain.optimizer.zero_grad()
        expected = task.loss(plain.model(inputs), targets)
        expected.backward()
        plain.optimizer.step()
        assert float(loss) == float(expected.detach())
    for a, b in zip(trial.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)


def write_calibration(path: Path, **updates: object) -> Path:
    """Write a calibration document (CALIBRATION with updates) to path."""
    path.write_text(json.dumps({**CALIBRATION, **updates}))
    return path


def test_calibration_sets_the_cuda_step_mode(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CALIBRATION_ENV, str(write_calibration(tmp_path / "c.json")))
    assert cuda_step_mode() == "cuda_graph"
    monkeypatch.delenv(CALIBRATION_ENV)
    monkeypatch.setattr("pipeline.calibration.DEFAULT_CALIBRATION", tmp_path / "absent.json")
    assert load_calibration() is None
    assert cuda_step_mode() == "eager"


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"device": "cpu", "quick": True}, "only a full run on a GPU calibrates"),
        ({"step_mode": "turbo"}, "step_mode 'turbo'"),
        ({"images_per_second": {"8": -1}}, "images_per_second"),
        ({"images_per_second": "fast"}, "images_per_second 'fast'"),
        ({"format": 7}, "format 7"),
    ],
)
def test_a_bad_calibration_is_named(tmp_path: Path, updates: dict, message: str) -> None:
    path = write_calibration(tmp_path / "c.json", **updates)
    with pytest.raises(ValueError, match="calibration file") as error:
        load_calibration(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_dry_run_names_its_calibration(tmp_path: Path) -> None:
    configs = trial_configs("fig3")
    resources = Resources(use_gpus=True)
    guess = format_dry_run("fig3", configs, resources)
    assert "calibration: the built-in guess" in guess
    calibration = load_calibration(write_calibration(tmp_path / "c.json"))
    measured = format_dry_run("fig3", configs, resources, calibration)
    assert (
        "measured by make gpu-check on test GPU" in measured and "step mode cuda_graph" in measured
    )
    # Twice the guessed rate at every width halves the GPU-hours.
    doubled = {w: 2 * r for w, r in IMAGES_PER_SECOND.items()}
    for config in configs[:5]:
        assert gpu_hours(config, resources, doubled) == pytest.approx(
            gpu_hours(config, resources) / 2
        )
