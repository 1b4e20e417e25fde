"""Conditions of a run in the paper's words: variant (non-rec. / rec. lambda), block, variation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

# The paper's design (Results; docs/sweeps.md): what each figure expects to find.
PAPER_WIDTHS = (8, 16, 32, 64)
PAPER_COUPLINGS = (0.0, 0.5, 0.9, 1.0)
PAPER_VARIANTS = ("non-rec.", *(f"rec. {lam:g}" for lam in PAPER_COUPLINGS))
DATASET_ORDER = (
    "cifar10",
    "digitclutter-5",
    "digitclutter-4",
    "digitclutter-3",
    "cifar100",
    "mnist",
)
DATASET_LABELS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    "digitclutter-3": "Digitclutter-3",
    "digitclutter-4": "Digitclutter-4",
    "digitclutter-5": "Digitclutter-5",
}
BLOCK_LABELS = {"ordinary": "ordinary", "icr": "ICR", "pcr": "PCR"}
STANDARD = "standard"
FULL = "full"
INDEX_NAMES = ("ci", "ri", "di")
INDEX_LABELS = {"ci": "Convergence Index", "ri": "Recurrence Index", "di": "Divergence Index"}
REQUIRED = (
    "run_id",
    "data.dataset",
    "model.width",
    "model.block",
    "model.recurrent_init",
    "coupling.lam",
    "final_test_error",
)


def variant_label(recurrent_init: bool, lam: float) -> str:
    """Return "non-rec." (non-recurrent init, lambda 0), "rec. lambda", or "non-rec. lambda"."""
    if recurrent_init:
        return f"rec. {lam:g}"
    return "non-rec." if lam == 0 else f"non-rec. {lam:g}"


def variant_key(label: str) -> tuple[int, float]:
    """Return the sort key of a variant label: non-recurrent first, then by coupling."""
    recurrent = label.startswith("rec.")
    rest = label.removeprefix("rec.").removeprefix("non-rec.").strip()
    return (int(recurrent), float(rest) if rest else 0.0)


def variation_label(bn_gamma_init: float, kernel: str, first_coupled: int) -> str:
    """Return the training variation (paper S4): standard, BN gamma 0.1, triangular, ..."""
    parts = []
    if bn_gamma_init != 1.0:
        parts.append(f"BN γ {bn_gamma_init:g}")
    if kernel != "uniform":
        parts.append(f"{kernel} kernel")
    if first_coupled > 0:
        parts.append(f"first {first_coupled} uncoupled")
    return ", ".join(parts) or STANDARD


def train_size_label(train_size: object) -> str:
    """Return "full" for None (whole training split) or the number of training images."""
    return FULL if train_size is None or pd.isna(train_size) else f"{int(train_size)}"


def with_conditions(runs: pd.DataFrame) -> pd.DataFrame:
    """Return runs with columns dataset, width, block, variant, variation, train_size, seed."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}: needed are {list(REQUIRED)}")
    out = runs.copy()

    def column(name: str, default: object) -> pd.Series:
        return out[name] if name in out.columns else pd.Series(default, index=out.index)

    out["dataset"] = out["data.dataset"].astype(str)
    out["width"] = out["model.width"].astype(int)
    out["block"] = out["model.block"].astype(str).map(lambda b: BLOCK_LABELS.get(b, b))
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
    out["error"] = out["final_test_error"].astype(float)
    return out


def ordered_variants(labels: Iterable[str]) -> list[str]:
    """Return the distinct variant labels in the paper's order (non-rec., rec. 0, ..., rec. 1)."""
    return sorted(set(labels), key=variant_key)


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


def dataset_label(name: str) -> str:
    """Return the paper's spelling of a dataset name (CIFAR-10, Digitclutter-5, ...)."""
    return DATASET_LABELS.get(name, name)


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
