"""One trial: train, evaluate and checkpoint every epoch, then perturbation curves and indices."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from models import build_model, converge_power_iteration, parameter_count
from models.staged import as_staged
from pipeline.calibration import cuda_step_mode
from pipeline.checkpoint import CHECKPOINT_NAME, has_checkpoint, load_checkpoint, save_checkpoint
from pipeline.config import TrialConfig, apply_overrides, network_shape
from pipeline.coupling import GradientCoupler
from pipeline.data import MEMORY_FORMAT, Dataset, DeviceLoader, load_dataset
from pipeline.indices import iteration_indices, perturbation_curves, undefined_indices
from pipeline.steps import TrainStep
from pipeline.tasks import Task
from vocabulary import CURVE_COLUMNS

logger = logging.getLogger("iterconv.train")

REFERENCE_BATCH = 128  # optim.lr is the peak learning rate per this many examples
INDEX_SUBSET_SEED = 0  # every trial measures its indices on the same test images

Report = Callable[[dict[str, float], str | None], None]


class DivergenceError(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch  # 1-based epoch in which the loss stopped being finite


@dataclass
class TrialResult:
    """What one trial produces: final metrics, indices, perturbation curves, per-epoch history."""

    config: TrialConfig
    metrics: dict[str, float]  # final_test_error, final_test_loss, final_train_loss, ...
    indices: dict[str, float]  # ci, ri, di and their per-stage values
    curves: pd.DataFrame  # columns stage, curve, step, error
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    diverged_epoch: int | None = None  # the epoch whose training loss became non-finite
    # The trained network, and the arguments of models.build_model that rebuild it.
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    network: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def diverged(self) -> bool:
        """Return True if training diverged (the result then counts at chance)."""
        return self.diverged_epoch is not None

    def summary(self) -> dict[str, float]:
        """Return the final metrics and the indices as one flat dict."""
        return {**self.metrics, **self.indices}


@dataclass
class Trial:
    """The live objects of a trial, built once from its config."""

    config: TrialConfig
    device: torch.device
    task: Task
    model: nn.Module  # a models.staged.StagedNetwork: the project's ResNet or a torchvision one
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    coupler: GradientCoupler | None
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    test_set: Dataset  # the test split, for the indices
    # Forward, backward, coupling, SGD step; its mode (pipeline/steps.py) and its bf16 autocast
    # (CUDA only; the benchmark turns it off to compare).
    step: TrainStep


def resolve_device(name: str) -> torch.device:
    """Return the torch device of run.device ("auto": CUDA when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device='cuda': CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Return the learning-rate multiplier of a step: linear warm-up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))


def load_splits(config: TrialConfig) -> tuple[Dataset, Dataset]:
    """Return the (train, test) splits of data.dataset, subsets and sizes as configured."""
    d = config.data
    train_set, test_set = (
        load_dataset(
            d.dataset,
            d.root,
            split,
            download=d.download,
            train_size=d.train_size if split == "train" else None,
            seed=config.run.seed,
            **d.generated_sizes(split),
        )
        for split in ("train", "test")
    )
    return train_set, test_set


def build_trial(
    config: TrialConfig,
    device: torch.device,
    splits: tuple[Dataset, Dataset] | None = None,
    step_mode: str | None = None,
) -> Trial:
    """Return the data, model, optimiser, schedule and coupler of a seeded trial.

    `step_mode` (pipeline/steps.py): default eager on a CPU, the calibration's on CUDA.
    """
    o, seed = config.optim, config.run.seed
    train_set, test_set = splits if splits is not None else load_splits(config)
    seed_everything(seed)  # right before the weights are drawn
    model = build_model(config.model, **network_shape(config)).to(device)
    mixed_precision = device.type == "cuda"
    model = model.to(memory_format=MEMORY_FORMAT)  # the layout of the loaders' batches
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=o.lr * o.batch_size / REFERENCE_BATCH,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )
    train_loader = DeviceLoader(train_set, o.batch_size, device, train=True, seed=seed)
    test_loader = DeviceLoader(test_set, o.batch_size, device, train=False, seed=seed)
    steps = len(train_loader)
    warmup, total = o.warmup_epochs * steps, o.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total)
    )
    c = config.coupling
    coupler = None
    if c.lam > 0:
        coupler = GradientCoupler(model, c)
    if step_mode is None:
        step_mode = cuda_step_mode() if device.type == "cuda" else "eager"
    step = TrainStep(model, optimizer, coupler, train_set.task, mixed_precision, step_mode)
    return Trial(
        config=config,
        device=device,
        task=train_set.task,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        coupler=coupler,
        train_loader=train_loader,
        test_loader=test_loader,
        test_set=test_set,
        step=step,
    )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(trial: Trial, epoch: int) -> dict[str, float]:
    """Train one epoch; return train_loss, train_error, lr, images_per_second."""
    model, task, device = trial.model, trial.task, trial.device
    model.train()
    trial.train_loader.set_epoch(epoch)
    # Losses stay on the device until the epoch ends: no host sync per step.
    losses = torch.zeros(len(trial.train_loader), device=device)
    sizes: list[int] = []
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    lr = trial.optimizer.param_groups[0]["lr"]
    _synchronise(device)
    start = time.perf_counter()
    for step, (inputs, targets) in enumerate(trial.train_loader):
        lr = trial.optimizer.param_groups[0]["lr"]
        loss, logits = trial.step(inputs, targets)
        trial.scheduler.step()
        losses[step] = loss
        wrong += task.wrong(logits, targets).sum()
        sizes.append(len(targets))
    _synchronise(device)
    seconds = time.perf_counter() - start
    losses = losses[: len(sizes)].cpu().double()
    _check_finite(losses, epoch)
    seen = sum(sizes)
    return {
        "train_loss": float((losses * torch.tensor(sizes, dtype=torch.float64)).sum()) / seen,
        "train_error": int(wrong) / seen,
        "lr": lr,
        "images_per_second": seen / seconds,
    }


def _check_finite(losses: torch.Tensor, epoch: int) -> None:
    """Raise DivergenceError naming the first step whose training loss is not finite."""
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    if len(bad) > 0:
        step = int(bad[0])
        raise DivergenceError(
            f"training diverged at epoch {epoch}, step {step + 1} of {len(losses)}: "
            f"loss {float(losses[step])}",
            epoch,
        )


def full_precision(trial: Trial) -> contextlib.AbstractContextManager:
    """Return a context with autocast off: evaluation is fp32 even inside a bf16 region."""
    # The Divergence Index applies the last block up to K more times: bf16 rounding would
    # compound there, so test error, curves and indices never run under autocast.
    return torch.autocast(trial.device.type, enabled=False)


@torch.no_grad()
def evaluate(trial: Trial, batches: Iterable | None = None) -> dict[str, float]:
    """Return test_loss, test_error (and Digitclutter's test_digit_error), in fp32, eval mode."""
    model, task, device = trial.model, trial.task, trial.device
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    missed = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    with full_precision(trial):
        for inputs, targets in trial.test_loader if batches is None else batches:
            logits = model(inputs)
            loss_sum += task.loss(logits, targets).double() * len(targets)
            wrong += task.wrong(logits, targets).sum()
            if task.multilabel:
                missed += task.missed_digits(logits, targets).sum()
            seen += len(targets)
    metrics = {"test_loss": float(loss_sum) / seen, "test_error": int(wrong) / seen}
    if task.multilabel:
        metrics["test_digit_error"] = int(missed) / (seen * task.digits_per_image)
    return metrics


def run_epoch(trial: Trial, epoch: int) -> dict[str, float]:
    """Train and evaluate one epoch; return its metrics (keys as in the contract)."""
    start = time.perf_counter()
    train = train_epoch(trial, epoch)
    return {
        "epoch": epoch,
        "train_loss": train["train_loss"],
        "train_error": train["train_error"],
        **evaluate(trial),
        "lr": train["lr"],
        "images_per_second": train["images_per_second"],
        "epoch_seconds": time.perf_counter() - start,
    }


def index_batches(trial: Trial) -> DeviceLoader:
    """Return the test batches for the indices: all, or data.index_examples seeded images."""
    subset, n = trial.test_set, trial.config.data.index_examples
    if n is not None and n < len(subset):
        generator = torch.Generator().manual_seed(INDEX_SUBSET_SEED)
        subset = subset.subset(torch.randperm(len(subset), generator=generator)[:n])
    batch_size = trial.config.optim.batch_size
    return DeviceLoader(subset, batch_size, trial.device, train=False, seed=INDEX_SUBSET_SEED)


def finish_trial(trial: Trial, history: list[dict[str, float]]) -> TrialResult:
    """Converge the spectral bounds, evaluate, and compute the perturbation curves and indices."""
    converge_power_iteration(trial.model)  # no-op for ordinary blocks
    final = evaluate(trial)
    trial.model.eval()
    with torch.no_grad(), full_precision(trial):
        curves = perturbation_curves(
            trial.model, index_batches(trial), trial.task, trial.config.run.extra_evaluations
        )
    indices = iteration_indices(curves, trial.task.chance_error, num_stages(trial))
    metrics = {
        **{f"final_{key}": value for key, value in final.items()},
        "final_train_loss": history[-1]["train_loss"],
        **_trial_facts(trial, history),
    }
    # What models.build_model needs to rebuild the network from its stored weights.
    network = {"model": dataclasses.asdict(trial.config.model), **network_shape(trial.config)}
    return TrialResult(
        trial.config, metrics, dict(indices), curves, history, model=trial.model, network=network
    )


def num_stages(trial: Trial) -> int:
    """Return the network's number of stages (3 for the project's ResNet, 4 for torchvision's)."""
    return len(as_staged(trial.model, "the indices").stage_blocks())


def _trial_facts(trial: Trial, history: list[dict[str, float]]) -> dict[str, float]:
    """Return the epochs run, training time, parameter count and the task's chance levels."""
    facts = {
        "epochs": len(history),
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "parameters": parameter_count(trial.config.model, **network_shape(trial.config)),
        "chance_error": trial.task.chance_error,
    }
    if trial.task.multilabel:
        facts["chance_digit_error"] = trial.task.chance_digit_error
    return facts


def diverged_result(
    trial: Trial, history: list[dict[str, float]], error: DivergenceError
) -> TrialResult:
    """Return the result of a diverged trial: error at chance, indices undefined (NaN)."""
    # A diverged network is counted, not dropped: leaving it out would make the conditions
    # most likely to diverge (high coupling, ICR) look better than they are.
    task = trial.task
    metrics = {
        "final_test_error": task.chance_error,
        "final_test_loss": math.nan,
        "final_train_loss": math.nan,
        "diverged_epoch": error.epoch,
        **_trial_facts(trial, history),
    }
    if task.multilabel:
        metrics["final_test_digit_error"] = task.chance_digit_error
    curves = pd.DataFrame(columns=list(CURVE_COLUMNS))
    indices = undefined_indices(num_stages(trial))
    return TrialResult(trial.config, metrics, indices, curves, history, error.epoch)


def _epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """Return the one-line log of an epoch."""
    m = metrics
    return (
        f"epoch {m['epoch']}/{epochs} train_loss {m['train_loss']:.4f} "
        f"train_error {m['train_error']:.4f} test_loss {m['test_loss']:.4f} "
        f"test_error {m['test_error']:.4f} lr {m['lr']:.4g} "
        f"{m['images_per_second']:.0f} img/s {m['epoch_seconds']:.1f} s"
    )


def run_trial(
    config: TrialConfig,
    report: Report | None = None,
    checkpoint_dir: str | None = None,
    on_data: Callable[[tuple[Dataset, Dataset]], None] | None = None,
) -> TrialResult:
    """Train one trial (resuming from checkpoint_dir if it holds a checkpoint); return results.

    `on_data` is given the (train, test) splits once they are loaded, before training.
    """
    device = resolve_device(config.run.device)
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    splits = load_splits(config)
    if on_data is not None:
        on_data(splits)
    trial = build_trial(config, device, splits)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict[str, float]] = []
    if path is not None and has_checkpoint(path):
        history = load_checkpoint(path, trial)
        logger.info("resumed %s after epoch %d", path, len(history))
    for epoch in range(len(history) + 1, config.optim.epochs + 1):
        try:
            metrics = run_epoch(trial, epoch)
        except DivergenceError as error:
            logger.warning("%s: the trial ends as diverged", error)
            return diverged_result(trial, history, error)
        history.append(metrics)
        if path is not None:
            save_checkpoint(path, trial, history)
        logger.info(_epoch_line(metrics, config.optim.epochs))
        if report is not None:
            report(dict(metrics), checkpoint_dir)
    return finish_trial(trial, history)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one trial from key=value overrides and print its summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train", description="Train one trial and print its indices."
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. optim.lr=0.05")
    parser.add_argument("--checkpoint-dir", help="write checkpoint.pt here; resume if present")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(TrialConfig(), args.overrides)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run_trial(config, checkpoint_dir=args.checkpoint_dir)
    json.dump(result.summary(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
