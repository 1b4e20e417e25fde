"""Perturbation curves and iterative convergence indices (docs/method.md).

For each stage s (1..3 for the project's ResNet) with N_s blocks:

- read-out curve r_s(t), t = 1..N_s: stage s runs blocks 1..t only;
- drop-out curve d_s(t), t = 1..N_s: stage s skips block t;
- extra-evaluation curve x_s(k), k = 0..K: stage s applies its last block k more times.

Steps are 1-indexed as in the paper; step t is block t - 1 of the model. The network is any
`models.staged.StagedNetwork` (the project's ResNet, or a torchvision ResNet through
`models.torchvision_resnet`); every perturbation is a schedule of its forward pass, so
`naive_perturbation_curves` runs one full forward pass per perturbation. `perturbation_curves`
gives the same error counts with far less work: it runs the network once per batch, keeps every
stage's input and block outputs, starts each perturbation where it departs from the unperturbed
pass and, on a GPU, sends many perturbed states through the rest of the network in one
concatenated batch (BN in evaluation mode acts per example, so stacking branches along the
batch changes nothing but float reduction order).

ICR and PCR blocks use their stored power-iteration vectors as they are: call
`models.converge_power_iteration(model)` before computing curves (the trainer does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.resnet import NUM_STAGES
from models.staged import StagedNetwork, as_staged, block_counts
from pipeline.config import check_extra_evaluations
from pipeline.tasks import Task
from vocabulary import CURVE_COLUMNS, INDEX_NAMES

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Key = tuple[int, str, int]  # (stage from 0, curve, step)


def perturbation_schedules(
    num_blocks: int, extra_evaluations: int
) -> list[tuple[str, int, list[int]]]:
    """Return (curve, step, block schedule of the perturbed stage) for every perturbation."""
    last = num_blocks - 1
    readout = [("readout", t, list(range(t))) for t in range(1, num_blocks + 1)]
    dropout = [
        ("dropout", t, [u for u in range(num_blocks) if u != t - 1])
        for t in range(1, num_blocks + 1)
    ]
    extra = [
        ("extra", k, list(range(num_blocks)) + [last] * k) for k in range(extra_evaluations + 1)
    ]
    return readout + dropout + extra


@contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Put every module in evaluation mode and give each back its own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _check_arguments(
    model: nn.Module, extra_evaluations: int
) -> tuple[nn.Module, StagedNetwork, list[int]]:
    """Return the module (unwrapped from torch.compile), it as a staged network, and N_s."""
    module = getattr(model, "_orig_mod", model)
    network = as_staged(module, "perturbation curves")
    check_extra_evaluations(extra_evaluations, "extra_evaluations")
    return module, network, block_counts(network)


def _on_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _curves_frame(
    counts: dict[Key, torch.Tensor], examples: int, blocks: list[int], extra_evaluations: int
) -> pd.DataFrame:
    """Return the long table stage (from 1), curve, step, error from per-key wrong counts."""
    if examples == 0:
        raise ValueError("batches held no examples: cannot compute perturbation curves")
    rows = [
        (s + 1, curve, step, int(counts[(s, curve, step)]) / examples)
        for s, num_blocks in enumerate(blocks)
        for curve, step, _ in perturbation_schedules(num_blocks, extra_evaluations)
    ]
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def naive_perturbation_curves(
    model: nn.Module, batches: Batches, task: Task, extra_evaluations: int = 16
) -> pd.DataFrame:
    """Return the perturbation curves by one full forward pass per perturbation (reference)."""
    module, network, blocks = _check_arguments(model, extra_evaluations)
    device = next(module.parameters()).device
    schedules = [perturbation_schedules(n, extra_evaluations) for n in blocks]
    counts: dict[Key, torch.Tensor] = {}
    examples = 0
    with _evaluation(module):
        for batch in batches:
            inputs, targets = _on_device(batch, device)
            examples += len(inputs)
            for s, stage_schedules in enumerate(schedules):
                for curve, step, schedule in stage_schedules:
                    wrong = task.wrong(network(inputs, {s: schedule}), targets).sum()
                    _count(counts, (s, curve, step), wrong)
    return _curves_frame(counts, examples, blocks, extra_evaluations)


class _BranchBatch:
    """Collects perturbed outputs of one stage and sends them through the rest in batches."""

    def __init__(
        self,
        model: StagedNetwork,
        stage_index: int,
        task: Task,
        targets: torch.Tensor,
        counts: dict[Key, torch.Tensor],
        max_examples: int,
    ) -> None:
        self.model = model
        self.stage_index = stage_index
        self.task = task
        self.targets = targets
        self.counts = counts
        self.max_examples = max_examples
        self.states: list[torch.Tensor] = []
        self.keys: list[Sequence[tuple[str, int]]] = []

    def add(self, state: torch.Tensor, *keys: tuple[str, int]) -> None:
        """Queue one perturbed stage output; its wrong count goes to every (curve, step) key."""
        batch_size = len(self.targets)
        if self.states and (len(self.states) + 1) * batch_size > self.max_examples:
            self.flush()
        self.states.append(state)
        self.keys.append(keys)

    def flush(self) -> None:
        """Run the queued states through the rest of the network and count the errors."""
        if not self.states:
            return
        branches = len(self.states)
        logits = self.model.forward_from(self.stage_index, torch.cat(self.states))
        repeats = (branches,) + (1,) * (self.targets.dim() - 1)
        wrong = self.task.wrong(logits, self.targets.repeat(repeats))
        wrong = wrong.view(branches, len(self.targets)).sum(dim=1)
        for i, keys in enumerate(self.keys):
            for curve, step in keys:
                _count(self.counts, (self.stage_index, curve, step), wrong[i])
        self.states, self.keys = [], []


def _count(counts: dict[Key, torch.Tensor], key: Key, wrong: torch.Tensor) -> None:
    counts[key] = counts[key] + wrong if key in counts else wrong


def _stage_pass(
    network: StagedNetwork, s: int, num_blocks: int, h: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return stage s's input (after its transition) and the output of each of its blocks."""
    x = network.forward_transition(s, h)
    outputs, z = [], x
    for t in range(num_blocks):
        z = network.forward_block(s, t, z, x)
        outputs.append(z)
    return x, outputs


def _dropout_states(
    network: StagedNetwork,
    s: int,
    stage_input: torch.Tensor,
    outputs: list[torch.Tensor],
    group: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (block b, stage output with block b skipped) for b = 0..N-2, `group` at a time."""
    # Branch b starts from the state before block b and then needs blocks b+1..N-1. Branches
    # b < j all need block j, so a group of branches advances as one batch: branch j-1 joins
    # just before block j is applied.
    num_blocks = len(outputs)
    batch_size = len(stage_input)
    for first in range(0, num_blocks - 1, group):
        last = min(first + group, num_blocks - 1)  # branches first..last-1
        states: torch.Tensor | None = None
        repeated_input = stage_input.repeat((last - first,) + (1,) * (stage_input.dim() - 1))
        for j in range(first + 1, num_blocks):
            if j - 1 < last:
                joining = outputs[j - 2] if j >= 2 else stage_input
                states = joining if states is None else torch.cat([states, joining])
            assert states is not None
            states = network.forward_block(s, j, states, repeated_input[: len(states)])
        assert states is not None
        for i, state in enumerate(states.split(batch_size)):
            yield first + i, state


def default_branch_examples(device: torch.device) -> int:
    """Return how many examples of perturbed states go through the network in one batch."""
    # A GPU runs small networks far below capacity, so stacking branches raises throughput.
    # On a CPU a bigger batch falls out of cache and runs slower per example (measured:
    # 4096 rows take 2.7x as long as 128 for width 8), so there branches go one at a time.
    return 4096 if device.type == "cuda" else 1


def perturbation_curves(
    model: nn.Module,
    batches: Batches,
    task: Task,
    extra_evaluations: int = 16,
    *,
    max_branch_examples: int | None = None,
) -> pd.DataFrame:
    """Return the read-out, drop-out and extra-evaluation error curves of every stage."""
    module, network, blocks = _check_arguments(model, extra_evaluations)
    device = next(module.parameters()).device
    if max_branch_examples is None:
        max_branch_examples = default_branch_examples(device)
    if (
        isinstance(max_branch_examples, bool)
        or not isinstance(max_branch_examples, int)
        or max_branch_examples < 1
    ):
        raise ValueError(f"max_branch_examples={max_branch_examples!r}: allowed is an int >= 1")
    counts: dict[Key, torch.Tensor] = {}
    examples = 0
    with _evaluation(module):
        for batch in batches:
            inputs, targets = _on_device(batch, device)
            examples += len(inputs)
            group = max(1, max_branch_examples // len(inputs))
            # Each stage's perturbations run as soon as its blocks have, so only one stage's
            # block outputs (N states of the batch) are held at a time.
            h = network.forward_stem(inputs)
            for s, num_blocks in enumerate(blocks):
                stage_input, outputs = _stage_pass(network, s, num_blocks, h)
                pending = _BranchBatch(network, s, task, targets, counts, max_branch_examples)
                _queue_branches(pending, network, s, stage_input, outputs, extra_evaluations, group)
                pending.flush()
                h = outputs[-1]
                del stage_input, outputs
            final_wrong = task.wrong(network.forward_head(h), targets).sum()
            for s, num_blocks in enumerate(blocks):
                # The unperturbed pass is r_s(N) and x_s(0) of every stage.
                _count(counts, (s, "readout", num_blocks), final_wrong)
                _count(counts, (s, "extra", 0), final_wrong)
    return _curves_frame(counts, examples, blocks, extra_evaluations)


def _queue_branches(
    pending: _BranchBatch,
    network: StagedNetwork,
    s: int,
    stage_input: torch.Tensor,
    outputs: list[torch.Tensor],
    extra_evaluations: int,
    group: int,
) -> None:
    """Queue every perturbed output of one stage but the unperturbed one."""
    num_blocks = len(outputs)
    # Skipping the last block leaves the state of r_s(N-1), so d_s(N) shares that branch.
    if num_blocks >= 2:
        for t in range(1, num_blocks - 1):
            pending.add(outputs[t - 1], ("readout", t))
        pending.add(outputs[num_blocks - 2], ("readout", num_blocks - 1), ("dropout", num_blocks))
    else:
        pending.add(stage_input, ("dropout", 1))
    for b, state in _dropout_states(network, s, stage_input, outputs, group):
        pending.add(state, ("dropout", b + 1))
    z = outputs[-1]
    for k in range(1, extra_evaluations + 1):
        z = network.forward_block(s, num_blocks - 1, z, stage_input)
        pending.add(z, ("extra", k))


def _curve(curves: pd.DataFrame, stage: int, curve: str, first_step: int) -> np.ndarray:
    """Return the errors of one curve ordered by step, checking the steps are complete."""
    rows = curves[(curves["stage"] == stage) & (curves["curve"] == curve)].sort_values("step")
    steps = rows["step"].to_numpy()
    if len(steps) == 0 or not np.array_equal(steps, np.arange(first_step, first_step + len(steps))):
        raise ValueError(
            f"curve {curve!r} of stage {stage}: steps {steps.tolist()} must be "
            f"{first_step}, {first_step + 1}, ... without gaps"
        )
    return rows["error"].to_numpy(dtype=np.float64)


def _stage_indices(
    readout: np.ndarray, dropout: np.ndarray, extra: np.ndarray, chance_error: float
) -> tuple[float, float, float]:
    """Return (CI, RI, DI) of one stage by the formulas of docs/method.md."""
    e_final = readout[-1]
    if e_final >= chance_error or math.isclose(e_final, chance_error, rel_tol=1e-9):
        # A network no better than chance leaves no distance to normalise by: its indices
        # are undefined. Any finite stand-in would read as "perfectly convergent" (nothing
        # can rise above chance), so they are NaN and analysis leaves such runs out. At
        # chance by float rounding counts too: 8/12 is one ulp below 1 - 1/3.
        return math.nan, math.nan, math.nan
    scale = chance_error - e_final

    def normalised(errors: np.ndarray) -> np.ndarray:
        return np.clip((errors - e_final) / scale, 0.0, 1.0)

    def mean(values: np.ndarray) -> float:
        # N = 1 leaves no early block and K = 0 no extra evaluation: nothing deviates.
        return float(values.mean()) if len(values) else 0.0

    convergence = 1.0 - mean(normalised(readout[:-1]))
    recurrence = 1.0 - mean(np.clip(np.abs(dropout[:-1] - dropout[-1]) / scale, 0.0, 1.0))
    divergence = mean(normalised(extra[1:]))
    return convergence, recurrence, divergence


def iteration_indices(
    curves: pd.DataFrame, chance_error: float, num_stages: int = NUM_STAGES
) -> dict[str, float]:
    """Return ci, ri, di per stage (ci_stage1...) and as means over the `num_stages` stages."""
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ValueError(f"curves lack columns {missing}: needed are {list(CURVE_COLUMNS)}")
    if isinstance(chance_error, bool) or not isinstance(chance_error, int | float):
        raise ValueError(f"chance_error={chance_error!r}: allowed is a number in (0, 1]")
    if not 0 < chance_error <= 1:
        raise ValueError(f"chance_error={chance_error!r}: allowed is a number in (0, 1]")
    extra_stages = sorted(set(curves["stage"].tolist()) - set(range(1, num_stages + 1)))
    if extra_stages:
        # Left out, they would vanish from the means unnoticed (a 4-stage torchvision ResNet).
        raise ValueError(
            f"curves hold stages {extra_stages} outside 1..{num_stages}: pass num_stages, the "
            "network's number of stages"
        )
    indices: dict[str, float] = {}
    for stage in range(1, num_stages + 1):
        readout = _curve(curves, stage, "readout", 1)
        dropout = _curve(curves, stage, "dropout", 1)
        extra = _curve(curves, stage, "extra", 0)
        if len(dropout) != len(readout):
            raise ValueError(
                f"stage {stage}: read-out curve has {len(readout)} steps, drop-out curve "
                f"{len(dropout)}; both must have N"
            )
        values = _stage_indices(readout, dropout, extra, float(chance_error))
        for name, value in zip(INDEX_NAMES, values, strict=True):
            indices[f"{name}_stage{stage}"] = value
    stages = range(1, num_stages + 1)
    for name in INDEX_NAMES:
        indices[name] = float(np.mean([indices[f"{name}_stage{s}"] for s in stages]))
    return indices


def undefined_indices(num_stages: int = NUM_STAGES) -> dict[str, float]:
    """Return every index key of iteration_indices with NaN (a network without curves)."""
    stages = range(1, num_stages + 1)
    per_stage = {f"{n}_stage{s}": math.nan for s in stages for n in INDEX_NAMES}
    return {**per_stage, **{name: math.nan for name in INDEX_NAMES}}


__all__ = [
    "iteration_indices",
    "naive_perturbation_curves",
    "perturbation_curves",
    "perturbation_schedules",
    "undefined_indices",
]
