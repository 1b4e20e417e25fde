"""Values the paper states in its text, to set beside ours in figures/summary.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from vocabulary import FULL, STANDARD


@dataclass(frozen=True)
class PaperValue:
    """One number the paper states, the runs it is about, and where it says so."""

    quantity: str  # what is measured, in words
    column: str  # column of runs (with conditions) holding our value
    value: float  # the paper's value
    relation: str  # "=" for a reported number, "≈" for "near" / "almost"
    source: str  # where the paper states it
    levels: dict[str, object] = field(default_factory=dict)  # condition columns -> level
    # Where the paper's conditions are absent, compare on the datasets and widths present
    # (a claim about an index holds for any task; an error rate only for its own).
    relaxable: tuple[str, ...] = ("dataset", "width")


MAIN = {"variation": STANDARD, "train_size": FULL}
PAPER_VALUES = (
    PaperValue(
        "CIFAR-10 error, ordinary ResNet, width 16, non-rec.",
        "error",
        0.052,
        "=",
        'Results: "The ResNet achieved 5.2% classification error"',
        {"dataset": "cifar10", "block": "ordinary", "width": 16, "variant": "non-rec.", **MAIN},
        relaxable=(),
    ),
    PaperValue(
        "RI, ordinary ResNet, width 16, non-rec. (Fig 2b)",
        "ri",
        1.0,
        "≈",
        'Results: "the RI, across all stages, is close to 1.0"',
        {"dataset": "cifar10", "block": "ordinary", "width": 16, "variant": "non-rec.", **MAIN},
    ),
    PaperValue(
        "DI of ICRs, CIFAR-10, all couplings and widths",
        "di",
        0.0,
        "≈",
        'Results: "a Divergence Index at almost zero" (Fig 4a)',
        {"dataset": "cifar10", "block": "ICR", **MAIN},
    ),
    PaperValue(
        "DI of PCRs, CIFAR-10, all couplings and widths",
        "di",
        0.0,
        "≈",
        'Results: "a Divergence Index at almost zero" (S2 Fig)',
        {"dataset": "cifar10", "block": "PCR", **MAIN},
    ),
    PaperValue(
        "RI of coupled ResNets, CIFAR-10, all couplings and widths",
        "ri",
        1.0,
        "≈",
        'Results: "The Recurrence Index is centered closely around 1" (S1 Fig a)',
        {"dataset": "cifar10", "block": "ordinary", **MAIN},
    ),
    PaperValue(
        "RI of ICRs, CIFAR-10, all couplings and widths",
        "ri",
        1.0,
        "≈",
        'Results: "The Recurrence Index is again centered around one" (S1 Fig b)',
        {"dataset": "cifar10", "block": "ICR", **MAIN},
    ),
)
