"""The paper's claims judged on our runs: a statistic, a bootstrap interval, a verdict.

One row per claim (analysis/claims.py) and condition group (dataset, training size,
variation, width) where runs exist. The statistics and rules are fixed here and documented in
docs/claims.md, before any result is seen; the bootstrap is seeded, so a table is the same on
every rerun.

Intervals are percentile intervals of a stratified bootstrap: every resample redraws the runs
(seeds) of each condition cell with replacement, keeping each cell's size. A verdict is
"reproduced" when the whole interval lies on the paper's side of the threshold,
"contradicted" when it lies wholly on the other side, and "inconclusive" otherwise, or when
a cell has fewer than MIN_RUNS_PER_CELL runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.claims import (
    CLAIMS,
    DIFFERENCE,
    INDEX_TOLERANCE,
    LEVEL,
    NO_RELATION_MARGIN,
    ORDINARY,
    RELATION,
    TREND,
    Claim,
)
from analysis.conditions import ordered_datasets, ordered_train_sizes, select, with_conditions
from vocabulary import variant_order

CLAIMS_FILE = "claims.csv"
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE)
# Fixed in advance (docs/claims.md); not to be tuned to a result.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # every row draws from a fresh generator with this seed
CONFIDENCE = 0.95  # two-sided percentile interval
MIN_RUNS_PER_CELL = 2  # a cell (variant, or block x variant) with fewer runs: inconclusive
MIN_CELLS = 2  # a trend or correlation needs at least two variants (or widths)
TABLE_COLUMNS = (
    "claim",
    "source",
    "quote",
    "dataset",
    "train_size",
    "variation",
    "width",
    "statistic",
    "estimate",
    "low",
    "high",
    "threshold",
    "n",
    "n_undefined",
    "n_diverged",
    "verdict",
    "reason",
)


@dataclass(frozen=True)
class Outcome:
    """The statistic of one claim on one group of runs, with its interval and verdict."""

    estimate: float
    low: float
    high: float
    verdict: str
    reason: str = ""


def _inconclusive(reason: str, estimate: float = np.nan) -> Outcome:
    return Outcome(estimate, np.nan, np.nan, INCONCLUSIVE, reason)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return Spearman's rho of each row pair of x and y (B x n); NaN where a row is constant."""
    rx = pd.DataFrame(x).rank(axis=1).to_numpy()  # average ranks for ties
    ry = pd.DataFrame(y).rank(axis=1).to_numpy()
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    norm = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (rx * ry).sum(axis=1) / norm, np.nan)


def _resample_indices(cells: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Return B x n row positions: each cell's runs redrawn with replacement, sizes kept."""
    parts = [
        cell[rng.integers(0, len(cell), size=(BOOTSTRAP_RESAMPLES, len(cell)))] for cell in cells
    ]
    return np.concatenate(parts, axis=1)


def _spread(values: np.ndarray, cells: Sequence[np.ndarray]) -> np.ndarray:
    """Return values with each cell's deviations from its mean scaled by sqrt(n / (n - 1)).

    Redrawing n runs from n underestimates a cell's variance by (n - 1) / n (by half for two
    seeds), which makes a plain bootstrap interval too narrow; resampling the rescaled values
    gives each cell mean its unbiased variance (the adjusted-residual bootstrap).
    """
    out = values.astype(float).copy()
    for cell in cells:
        if len(cell) > 1:
            mean = values[cell].mean()
            out[cell] = mean + (values[cell] - mean) * np.sqrt(len(cell) / (len(cell) - 1))
    return out


def _interval(draws: np.ndarray) -> tuple[float, float] | None:
    """Return the percentile interval of the draws, or None if most are undefined."""
    finite = draws[np.isfinite(draws)]
    if len(finite) < len(draws) / 2:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _verdict_by_sign(estimate: float, draws: np.ndarray, direction: int) -> Outcome:
    """Reproduced if the interval lies on the claimed side of 0, contradicted if opposite."""
    bounds = _interval(draws)
    if bounds is None or not np.isfinite(estimate):
        return _inconclusive("no variation in the values: the statistic is undefined", estimate)
    low, high = bounds
    side_low, side_high = sorted((direction * low, direction * high))
    if side_low > 0:
        return Outcome(estimate, low, high, REPRODUCED)
    if side_high < 0:
        return Outcome(estimate, low, high, CONTRADICTED)
    return Outcome(estimate, low, high, INCONCLUSIVE, "interval straddles 0")


def _verdict_in_band(estimate: float, draws: np.ndarray, centre: float, half: float) -> Outcome:
    """Reproduced if the interval lies within centre ± half, contradicted if wholly outside."""
    bounds = _interval(draws)
    if bounds is None or not np.isfinite(estimate):
        return _inconclusive("no variation in the values: the statistic is undefined", estimate)
    low, high = bounds
    if centre - half <= low and high <= centre + half:
        return Outcome(estimate, low, high, REPRODUCED)
    if high < centre - half or low > centre + half:
        return Outcome(estimate, low, high, CONTRADICTED)
    return Outcome(estimate, low, high, INCONCLUSIVE, f"interval straddles {centre:g} ± {half:g}")


def _cells(runs: pd.DataFrame, by: list[str]) -> tuple[list[tuple], list[np.ndarray]]:
    """Return the cell keys (sorted) and the row positions of each cell."""
    found = runs.reset_index(drop=True).groupby(by, sort=False).indices
    positions = {_tuple(k): np.asarray(v) for k, v in found.items()}
    keys = sorted(
        positions, key=lambda k: tuple(_sort_key(c, v) for c, v in zip(by, k, strict=True))
    )
    return keys, [positions[k] for k in keys]


def _tuple(key: object) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _sort_key(column: str, value: object) -> tuple:
    return variant_order(str(value)) if column == "variant" else (value,)


def _too_few(keys: list[tuple], cells: list[np.ndarray], what: str) -> str:
    """Return why the cells are too few to judge (or "" if enough)."""
    small = [
        f"{' '.join(map(str, _tuple(k)))}: {len(c)}"
        for k, c in zip(keys, cells, strict=True)
        if len(c) < MIN_RUNS_PER_CELL
    ]
    if small:
        return f"too few runs (each {what} needs {MIN_RUNS_PER_CELL}): {'; '.join(small)}"
    return ""


def _trend(claim: Claim, runs: pd.DataFrame) -> Outcome:
    keys, cells = _cells(runs, ["variant"])
    if len(cells) < MIN_CELLS:
        return _inconclusive(
            f"too few variants: {', '.join(k[0] for k in map(_tuple, keys)) or 'none'}"
        )
    rank = {k[0]: i for i, k in enumerate(keys)}
    x = np.array([rank[v] for v in runs["variant"]], dtype=float)
    y = runs[claim.column].to_numpy(dtype=float)
    estimate = float(_spearman_rows(x[None], y[None])[0])
    if reason := _too_few(keys, cells, "variant"):
        return _inconclusive(reason, estimate)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = _resample_indices(cells, rng)
    draws = _spearman_rows(x[picks], _spread(y, cells)[picks])
    return _verdict_by_sign(estimate, draws, claim.direction)


def _level(claim: Claim, runs: pd.DataFrame) -> Outcome:
    keys, cells = _cells(runs, ["variant"])
    if not cells:
        return _inconclusive("no runs")
    y = runs[claim.column].to_numpy(dtype=float)
    if reason := _too_few(keys, cells, "variant"):
        return _inconclusive(reason, float(y.mean()))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = _spread(y, cells)[_resample_indices(cells, rng)].mean(axis=1)
    return _verdict_in_band(float(y.mean()), draws, claim.target, INDEX_TOLERANCE)


def _difference(claim: Claim, runs: pd.DataFrame) -> Outcome:
    both = set(runs.loc[runs["block"] == ORDINARY, "variant"]) & set(
        runs.loc[runs["block"] == claim.versus, "variant"]
    )
    if not both:
        return _inconclusive(f"no variant has both ordinary and {claim.versus} runs")
    runs = runs[runs["variant"].isin(both)].reset_index(drop=True)
    keys, cells = _cells(runs, ["block", "variant"])
    y = runs[claim.column].to_numpy(dtype=float)
    # The mean over variants of (convergent - ordinary) cell means: each resample alike.
    sign = np.array([1.0 if k[0] == claim.versus else -1.0 for k in keys])
    sizes = np.array([len(c) for c in cells])
    weights = np.concatenate(
        [np.full(n, s / (n * len(both))) for s, n in zip(sign, sizes, strict=True)]
    )
    order = np.concatenate(cells)
    estimate = float((y[order] * weights).sum())
    if reason := _too_few(keys, cells, "block and variant"):
        return _inconclusive(reason, estimate)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = (_spread(y, cells)[_resample_indices(cells, rng)] * weights).sum(axis=1)
    return _verdict_by_sign(estimate, draws, claim.direction)


def _correlation(claim: Claim, runs: pd.DataFrame, across: str) -> Outcome:
    keys, cells = _cells(runs, [across, "variant"])
    levels = sorted({_tuple(k)[0] for k in keys})
    if claim.kind == RELATION and len(levels) < MIN_CELLS:
        return _inconclusive(
            f"one {across} ({levels[0] if levels else 'none'}): the claim compares {across}s"
        )
    if len(cells) < MIN_CELLS:
        return _inconclusive("too few variants")
    x = runs[claim.column].to_numpy(dtype=float)
    y = runs[claim.other].to_numpy(dtype=float)
    estimate = float(_spearman_rows(x[None], y[None])[0])
    if reason := _too_few(keys, cells, f"{across} and variant"):
        return _inconclusive(reason, estimate)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = _resample_indices(cells, rng)
    draws = _spearman_rows(_spread(x, cells)[picks], _spread(y, cells)[picks])
    if claim.kind == RELATION:
        return _verdict_by_sign(estimate, draws, claim.direction)
    return _verdict_in_band(estimate, draws, 0.0, NO_RELATION_MARGIN)


def judge(claim: Claim, runs: pd.DataFrame) -> Outcome:
    """Return the outcome of a claim on one group of runs (defined values only)."""
    if claim.kind == TREND:
        return _trend(claim, runs)
    if claim.kind == LEVEL:
        return _level(claim, runs)
    if claim.kind == DIFFERENCE:
        return _difference(claim, runs)
    return _correlation(claim, runs, "width")


def _selected(claim: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    """Return the runs a claim is about: its condition levels and variants."""
    levels: dict[str, object] = {"variant": claim.variants, **claim.levels}
    if claim.kind == DIFFERENCE:
        levels["block"] = (ORDINARY, claim.versus)
    return select(runs, exclude=claim.not_levels, **levels)


def _diverged(runs: pd.DataFrame) -> pd.Series:
    """Return the runs' `diverged` flags; all False where the table has no such column."""
    if "diverged" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["diverged"].fillna(False).astype(bool)


def _groups(claim: Claim, runs: pd.DataFrame) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """Return (group levels, runs) per group of the claim, in the summary's order."""
    if runs.empty:
        return []
    order = {
        "dataset": {d: i for i, d in enumerate(ordered_datasets(runs["dataset"]))},
        "train_size": {s: i for i, s in enumerate(ordered_train_sizes(runs["train_size"]))},
    }
    by = list(claim.group_by)
    found = runs.groupby(by, sort=False, dropna=False).groups
    keys = sorted(
        found,
        key=lambda k: [order.get(c, {}).get(v, v) for c, v in zip(by, _tuple(k), strict=True)],
    )
    return [(dict(zip(by, _tuple(k), strict=True)), runs.loc[found[k]]) for k in keys]


def claims_table(runs: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Return one row per claim and group of runs (with condition columns; see TABLE_COLUMNS)."""
    rows = []
    for claim in claims:
        for group, members in _groups(claim, _selected(claim, runs)):
            columns = [claim.column, claim.other] if claim.other else [claim.column]
            defined = members.dropna(subset=columns)
            undefined = members.drop(index=defined.index)
            outcome = judge(claim, defined.reset_index(drop=True))
            width = group.get("width")
            rows.append(
                {
                    "claim": claim.key,
                    "source": claim.source,
                    "quote": claim.quote,
                    "dataset": group.get("dataset", ""),
                    "train_size": group.get("train_size", ""),
                    "variation": group.get("variation", ""),
                    "width": "all" if width is None else str(width),
                    "statistic": claim.statistic(),
                    "estimate": outcome.estimate,
                    "low": outcome.low,
                    "high": outcome.high,
                    "threshold": claim.threshold(),
                    "n": len(defined),
                    "n_undefined": len(undefined),
                    "n_diverged": int(_diverged(members).sum()),
                    "verdict": outcome.verdict,
                    "reason": outcome.reason,
                }
            )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def write_claims(table: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write the claims table as claims.csv into `out`; return its path."""
    path = Path(out) / CLAIMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def null_verdict_rates(seeds: int, repeats: int = 200) -> dict[str, float]:
    """Return the share of each verdict of Fig 3b's trend on runs that have no trend.

    Each repeat draws `seeds` runs of each of the five variants, errors from one normal
    distribution (repeat r from generator seed r): a calibration of the verdicts, not a result.
    """
    claim = next(c for c in CLAIMS if c.key == "fig3b-error")
    counts = dict.fromkeys(VERDICTS, 0)
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        rows = [
            {
                "run_id": f"{variant}-{seed}",
                "data.dataset": "cifar10",
                "model.width": 16,
                "model.block": "ordinary",
                "model.recurrent_init": variant > 0,
                "coupling.lam": (0.0, 0.0, 0.5, 0.9, 1.0)[variant],
                "run.seed": seed,
                "final_test_error": rng.normal(0.1, 0.01),
            }
            for variant in range(5)
            for seed in range(seeds)
        ]
        table = claims_table(with_conditions(pd.DataFrame(rows)), [claim])
        counts[table["verdict"].iloc[0]] += 1
    return {verdict: count / repeats for verdict, count in counts.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Print how often each verdict is given when there is no trend (docs/claims.md)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m analysis.verdicts", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5], help="runs per cell")
    parser.add_argument("--repeats", type=int, default=200, help="synthetic tables per count")
    args = parser.parse_args(argv)
    for seeds in args.seeds:
        rates = null_verdict_rates(seeds, args.repeats)
        shares = ", ".join(f"{verdict} {rate:.3f}" for verdict, rate in rates.items())
        print(f"{seeds} seeds per variant, no trend, {args.repeats} tables: {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
