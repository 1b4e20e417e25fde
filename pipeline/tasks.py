"""How each dataset counts an error, what chance is, and which loss trains it (docs/method.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline import pathfinder
from vocabulary import DATASETS, DIGITCLUTTER, DIGITCLUTTER_DIGITS, PATHFINDER, PATHFINDER_LENGTHS


@dataclass(frozen=True)
class Task:
    """A classification task: single-label top-1, or Digitclutter's multi-label top-n."""

    name: str  # dataset name, e.g. "cifar10" or "digitclutter-3"
    num_classes: int  # outputs of the network
    digits_per_image: int = 0  # 0: single-label; n: an image holds n distinct digits
    contour_length: int = 0  # Pathfinder-L: L paddles per target contour; 0: not Pathfinder

    @property
    def multilabel(self) -> bool:
        """Return True for Digitclutter's multi-label targets (multi-hot vectors)."""
        return self.digits_per_image > 0

    @property
    def chance_error(self) -> float:
        """Return the error of guessing: 1 - 1/C for top-1, 1 - 1/C(C, n) for top-n sets."""
        if self.multilabel:
            return 1.0 - 1.0 / math.comb(self.num_classes, self.digits_per_image)
        return 1.0 - 1.0 / self.num_classes

    @property
    def chance_digit_error(self) -> float:
        """Return the digit error of guessing n of the C classes: 1 - n/C (Digitclutter only)."""
        return 1.0 - self.digits_per_image / self.num_classes

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean training loss: cross-entropy, or sigmoid BCE on multi-hot targets."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return F.cross_entropy(logits.float(), targets)

    def wrong(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return a bool per example: top-1 differs, or the top-n set is not the digits present."""
        if self.multilabel:
            top = logits.topk(self.digits_per_image, dim=1).indices
            predicted = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top, True)
            return (predicted != targets.bool()).any(dim=1)
        return logits.argmax(dim=1) != targets

    def missed_digits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return per image how many of its n digits are missing from the top-n outputs."""
        top = logits.topk(self.digits_per_image, dim=1).indices
        return self.digits_per_image - targets.bool().gather(1, top).sum(dim=1)


TASKS: dict[str, Task] = {
    "mnist": Task("mnist", 10),
    "cifar10": Task("cifar10", 10),
    "cifar100": Task("cifar100", 100),
    **{name: Task(name, 10, n) for name, n in zip(DIGITCLUTTER, DIGITCLUTTER_DIGITS, strict=True)},
    # Binary: are the two markers the two ends of one contour? Chance error 1 - 1/2.
    **{
        name: Task(name, pathfinder.NUM_CLASSES, contour_length=n)
        for name, n in zip(PATHFINDER, PATHFINDER_LENGTHS, strict=True)
    },
}


def task_for(dataset: str) -> Task:
    """Return the Task of a dataset name, or raise ValueError listing the known names."""
    if dataset not in TASKS:
        raise ValueError(f"unknown dataset {dataset!r}: allowed are {sorted(DATASETS)}")
    return TASKS[dataset]
