"""Each run's conditions in the paper's words (vocabulary.py), and their orders and notes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from vocabulary import (
    BLOCK_LABELS,
    DATASET_ORDER,
    FULL,
    PREACT,
    variant_label,
    variant_order,
    variation_label,
)

REQUIRED = (
    "run_id",
    "data.dataset",
    "model.width",
    "model.block",
    "model.recurrent_init",
    "coupling.lam",
    "final_test_error",
)


def train_size_label(train_size: object) -> str:
    """Return "full" for None (whole training split) or the number of training images."""
    return FULL if train_size is None or pd.isna(train_size) else f"{int(train_size)}"


ERRORS = ("image", "digit")  # Digitclutter's two errors (docs/method.md); others have one


def with_conditions(
    runs: pd.DataFrame, error: str = "image", exclude_diverged: bool = False
) -> pd.DataFrame:
    """Return runs with columns dataset, arch, width, block, variant, variation, train_size,
    seed, diverged and error (Digitclutter's image or digit error; NaN for diverged runs if
    excluded). A run of a model.arch other than "preact" has its arch as its block.
    """
    if error not in ERRORS:
        raise ValueError(f"error={error!r}: allowed are {ERRORS}")
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}: needed are {list(REQUIRED)}")
    out = runs.copy()

    def column(name: str, default: object) -> pd.Series:
        return out[name] if name in out.columns else pd.Series(default, index=out.index)

    out["dataset"] = out["data.dataset"].astype(str)
    out["width"] = out["model.width"].astype(int)
    # Runs logged before model.arch existed are of the pre-activation ResNet.
    out["arch"] = column("model.arch", PREACT).fillna(PREACT).astype(str)
    # The paper's blocks (ordinary, ICR, PCR) are of its pre-activation ResNet, and every figure
    # and claim selects runs by block: a torchvision ResNet's block is its arch, so that it never
    # counts as an ordinary ResNet of width 16 (its model.width is unused).
    out["block"] = [
        BLOCK_LABELS.get(block, block) if arch == PREACT else arch
        for block, arch in zip(out["model.block"].astype(str), out["arch"], strict=True)
    ]
    out["variant"] = [
        variant_label(bool(r), float(lam))
        for r, lam in zip(out["model.recurrent_init"], out["coupling.lam"], strict=True)
    ]
    out["variation"] = [
        variation_label(float(g), str(k), int(f))
        for g, k, f in zip(
            column("model.bn_gamma_init", 1.0),
            column("coupling.kernel", "uniform"),
            column("coupling.first_coupled", 0),
            strict=True,
        )
    ]
    out["train_size"] = [train_size_label(v) for v in column("data.train_size", None)]
    out["seed"] = column("run.seed", 0).astype(int)
    out["diverged"] = column("diverged", False).fillna(False).astype(bool)
    out["error"] = out["final_test_error"].astype(float)
    if error == "digit" and "final_test_digit_error" in out.columns:
        digit = out["final_test_digit_error"].astype(float)
        out["error"] = digit.where(digit.notna(), out["error"])
    if exclude_diverged:
        out.loc[out["diverged"], "error"] = float("nan")
    return out


ANY_OF = (tuple, list, set, frozenset)  # a level given as one of these: any of its members


def select(
    runs: pd.DataFrame, exclude: Mapping[str, object] | None = None, **levels: object
) -> pd.DataFrame:
    """Return the runs at these levels (None: any; a tuple: any of its) and not at exclude's."""
    keep = pd.Series(True, index=runs.index)
    for column, level in levels.items():
        if level is not None:
            keep &= _at(runs[column], level)
    for column, level in (exclude or {}).items():
        keep &= ~_at(runs[column], level)
    return runs[keep]


def _at(column: pd.Series, level: object) -> pd.Series:
    """Return where a condition column holds the level (or one of the levels)."""
    return column.isin(level) if isinstance(level, ANY_OF) else column == level


def ordered_variants(labels: Iterable[str]) -> list[str]:
    """Return the distinct variant labels in the paper's order (non-rec., rec. 0, ..., rec. 1)."""
    return sorted(set(labels), key=variant_order)


def ordered_datasets(names: Iterable[str]) -> list[str]:
    """Return the distinct dataset names, the paper's main ones first."""
    names = set(names)
    known = [d for d in DATASET_ORDER if d in names]
    return known + sorted(names - set(known))


def ordered_train_sizes(labels: Iterable[str]) -> list[str]:
    """Return the distinct train size labels: numbers ascending, then "full"."""
    labels = set(labels)
    numbers = sorted((label for label in labels if label != FULL), key=int)
    return numbers + ([FULL] if FULL in labels else [])


def missing_note(expected: dict[str, Sequence[object]], present: dict[str, Iterable]) -> str:
    """Return "missing: width 32, 64; rec. 0.9" for expected levels absent, or ""."""
    parts = []
    for name, levels in expected.items():
        have = set(present.get(name, ()))
        absent = [level for level in levels if level not in have]
        if not absent:
            continue
        shown = ", ".join(
            f"{level:g}" if isinstance(level, float) else str(level) for level in absent
        )
        parts.append(shown if name in ("variant", "dataset") else f"{name} {shown}")
    return "missing: " + "; ".join(parts) if parts else ""


__all__ = [
    "ERRORS",
    "missing_note",
    "ordered_datasets",
    "ordered_train_sizes",
    "ordered_variants",
    "select",
    "train_size_label",
    "with_conditions",
]
