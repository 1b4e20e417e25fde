"""The staged network that the perturbation curves and the gradient coupling act on.

A staged network is stem -> stage 1 -> ... -> stage S -> head, where stage s is a transition
(the identity where the stage keeps its input's shape) followed by N_s shape-preserving blocks.
Reading out early, dropping a block and applying the last block again are schedules of those
blocks; soft gradient coupling mixes their gradients. Two networks satisfy it: the project's
pre-activation ResNet (`models.resnet.ResNet`) and torchvision's ResNets
(`models.torchvision_resnet.TorchvisionResNet`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

Schedules = Mapping[int, Sequence[int]]  # stage index -> the block indices it runs, in order


@runtime_checkable
class StagedNetwork(Protocol):
    """Stem, stages of shape-preserving blocks behind their transitions, and a head."""

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stem's output: the input of stage 0's transition."""
        ...

    def stage_blocks(self) -> Sequence[Sequence[nn.Module]]:
        """Return each stage's shape-preserving blocks in order (all of one shape per stage)."""
        ...

    def block_parameters(self) -> tuple[str, ...]:
        """Return the names of the parameters every block of a stage holds at one position."""
        ...

    def forward_transition(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Return stage `stage`'s input from the previous stage's output (the stem's for 0)."""
        ...

    def forward_block(
        self, stage: int, block: int, z: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Return block `block` of stage `stage` applied to state z; x is the stage's input."""
        ...

    def forward_from(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Return the logits from stage `stage`'s output, the later stages unperturbed."""
        ...

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        """Return the logits from the last stage's output."""
        ...

    def __call__(self, x: torch.Tensor, schedules: Schedules | None = None) -> torch.Tensor:
        """Return the logits; stages not named in `schedules` run all their blocks."""
        ...


def as_staged(model: nn.Module, purpose: str) -> StagedNetwork:
    """Return the model (unwrapped from torch.compile) as a StagedNetwork, or raise ValueError."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, StagedNetwork):
        raise ValueError(
            f"model of type {type(model).__name__}: {purpose} need a models.staged.StagedNetwork "
            "(the project's ResNet or a models.torchvision_resnet.TorchvisionResNet)"
        )
    return model


def block_counts(network: StagedNetwork) -> list[int]:
    """Return N_s, the number of shape-preserving blocks, of every stage."""
    return [len(blocks) for blocks in network.stage_blocks()]


def check_schedules(schedules: Schedules | None, counts: Sequence[int]) -> None:
    """Raise ValueError unless each schedule names an existing stage and its blocks."""
    for s, schedule in (schedules or {}).items():
        if s not in range(len(counts)):
            raise ValueError(f"schedules key {s!r}: stages are 0..{len(counts) - 1}")
        if any(t not in range(counts[s]) for t in schedule):
            raise ValueError(
                f"schedule {list(schedule)!r} for stage {s}: block indices must be in "
                f"0..{counts[s] - 1}"
            )


__all__ = ["Schedules", "StagedNetwork", "as_staged", "block_counts", "check_schedules"]
