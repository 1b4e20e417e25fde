"""Load the Parquet tables for the figures, and write figures/summary.md with its sections."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.claims import BESIDE_OURS, CLAIMS, Claim
from analysis.conditions import ordered_train_sizes, select, with_conditions
from analysis.runs_to_tables import CURVE_COLUMNS, CURVES_FILE, RUNS_FILE
from analysis.table_pair import read_tables_together
from analysis.verdicts import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_RUNS_PER_CELL, VERDICTS
from vocabulary import DATASET_ORDER, INDEX_NAMES, dataset_label, variant_order

CONDITION_COLUMNS = ("dataset", "block", "variation", "train_size", "width", "variant")
SUMMARY_METRICS = (("error", "error"), ("ci", "CI"), ("ri", "RI"), ("di", "DI"))


def load_results(
    directory: str | os.PathLike, error: str = "image", exclude_diverged: bool = False
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Return (runs with condition columns, curves) from a results directory, or (None, None)."""
    tables = read_tables_together(directory, (RUNS_FILE, CURVES_FILE))
    if RUNS_FILE not in tables:
        return None, None
    if tables[RUNS_FILE].empty:  # an aggregation that found no runs writes an empty table
        raise ValueError(f"{Path(directory) / RUNS_FILE} holds no runs: aggregation found none")
    runs = with_conditions(tables[RUNS_FILE], error, exclude_diverged)
    curves = tables.get(CURVES_FILE)
    return runs, pd.DataFrame(columns=list(CURVE_COLUMNS)) if curves is None else curves


def condition_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Return one row per condition: n runs and mean and sd over seeds of error, CI, RI, DI."""
    columns = [c for c, _ in SUMMARY_METRICS]
    grouped = runs.groupby(list(CONDITION_COLUMNS), dropna=False)[columns]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    table.columns = [f"{a}_{b}" if b else a for a, b in table.columns]
    counts = runs.groupby(list(CONDITION_COLUMNS), dropna=False)["diverged"].agg(["size", "sum"])
    table["n"] = counts["size"].to_numpy()
    table["diverged"] = counts["sum"].to_numpy()
    rank = {d: i for i, d in enumerate(DATASET_ORDER)}
    sizes = {s: i for i, s in enumerate(ordered_train_sizes(table["train_size"]))}
    table = table.sort_values(
        list(CONDITION_COLUMNS),
        key=lambda s: {
            "dataset": lambda v: v.map(lambda d: (rank.get(d, len(rank)), d)),
            "train_size": lambda v: v.map(sizes),
            "variant": lambda v: v.map(variant_order),
        }.get(s.name, lambda v: v)(s),
    )
    return table.reset_index(drop=True)


def count_label(n: int, diverged: int) -> str:
    """Return "3", or "3 (1 diverged)": a diverged run counts, at chance error."""
    return f"{n} ({diverged} diverged)" if diverged else f"{n}"


def _mean_sd(mean: float, sd: float, count: int, percent: bool = False) -> str:
    if count == 0 or pd.isna(mean):
        return "–"
    if percent:  # errors in percent, two decimals
        text = f"{mean * 100:.2f}"
        return (text if count < 2 or pd.isna(sd) else f"{text} ± {sd * 100:.2f}") + "%"
    return f"{mean:.3f}" if count < 2 or pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"


def paper_comparison(runs: pd.DataFrame) -> list[tuple[Claim, str, int]]:
    """Return (claim, our mean +/- sd as text, n runs) for each value the paper states."""
    rows = []
    for claim in BESIDE_OURS:
        assert claim.summary is not None  # every claim of BESIDE_OURS has its row
        levels = claim.summary_levels()
        values = select(runs, **levels)[claim.column].dropna()
        remark = ""
        if values.empty and claim.summary.relaxable:
            # The paper's dataset or width is absent: compare on those present within the
            # claim's own levels (the paper's datasets, never Pathfinder), and say so.
            kept = {
                k: v for k, v in claim.summary.where.items() if k not in claim.summary.relaxable
            }
            levels = {**claim.levels, **kept}
            matched = select(runs, **levels).dropna(subset=[claim.column])
            values = matched[claim.column]
            if len(values):
                datasets = ", ".join(dataset_label(d) for d in sorted(matched["dataset"].unique()))
                widths = ", ".join(str(w) for w in sorted(matched["width"].unique()))
                remark = f" (on {datasets}, width {widths})"
        percent = claim.column == "error"
        ours = _mean_sd(values.mean(), values.std(), len(values), percent) + remark
        rows.append((claim, ours, len(values)))
    return rows


def summary_markdown(runs: pd.DataFrame, sections: Sequence[str] = ()) -> str:
    """Return figures/summary.md: the paper's values beside ours, `sections`, every condition."""
    lines = [
        "# Summary of results",
        "",
        f"{len(runs)} finished runs in {runs['experiment'].nunique()} experiment(s): "
        f"{', '.join(sorted(runs['experiment'].unique()))}. Mean ± sd over seeds; errors in %.",
        "",
        "## The paper's values beside ours",
        "",
        "| quantity | paper | ours | runs | where the paper says so |",
        "|---|---|---|---|---|",
    ]
    lines += [claim.beside_ours(ours, count) for claim, ours, count in paper_comparison(runs)]
    for section in sections:  # e.g. the claims table (claims_markdown)
        lines += ["", section.rstrip("\n")]
    lines += [
        "",
        "## Per condition",
        "",
        "| dataset | block | variation | train size | width | variant | n | error | CI | RI | DI |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in condition_summary(runs).itertuples(index=False):
        values = row._asdict()
        cells = [
            dataset_label(values["dataset"]),
            values["block"],
            values["variation"],
            values["train_size"],
            str(values["width"]),
            values["variant"],
            count_label(values["n"], values["diverged"]),
        ]
        for column, _ in SUMMARY_METRICS:
            cells.append(
                _mean_sd(
                    values[f"{column}_mean"],
                    values[f"{column}_std"],
                    values[f"{column}_count"],
                    percent=column == "error",
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    missing = int(runs[list(INDEX_NAMES)].isna().any(axis=1).sum()) if "ci" in runs else 0
    if missing:
        lines += ["", f"{missing} run(s) without indices: their final error is at chance."]
    diverged = int(runs["diverged"].sum())
    if diverged:
        lines += [
            "",
            f"{diverged} run(s) diverged (non-finite training loss): each counts in n, with its "
            "error at chance and no indices.",
        ]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def claims_markdown(table: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> str:
    """Return the claims section of summary.md: the quotes, then one line per row."""
    lines = [
        "## The paper's claims, checked on these runs",
        "",
        "Statistics, thresholds and verdicts as in docs/claims.md: 95% stratified bootstrap "
        f"intervals ({BOOTSTRAP_RESAMPLES} resamples of the seeds of each condition, seed "
        f"{BOOTSTRAP_SEED}); reproduced = the interval lies on the paper's side, contradicted = "
        "wholly on the other, inconclusive = it straddles the threshold or a condition has "
        f"fewer than {MIN_RUNS_PER_CELL} runs. n counts runs with defined values; runs at chance "
        "(indices undefined) are counted apart, diverged ones among them.",
        "",
    ]
    for claim in claims:
        lines.append(f"- **{claim.key}** ({claim.source}): {claim.quote}")
    counts = table["verdict"].value_counts()
    unchecked = [claim.key for claim in claims if claim.key not in set(table["claim"])]
    lines += [
        "",
        "Verdicts: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ".",
        *(
            [f"Not checked (no runs of their conditions): {', '.join(unchecked)}."]
            if unchecked
            else []
        ),
        "",
        "| claim | dataset | train size | variation | width | statistic | estimate [95% interval] "
        "| reproduced if | n | undefined (diverged) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        interval = f"{_number(row.estimate)} [{_number(row.low)}, {_number(row.high)}]"
        verdict = f"**{row.verdict}**" + (f": {row.reason}" if row.reason else "")
        cells = [
            row.claim,
            dataset_label(row.dataset),
            row.train_size or "–",
            row.variation or "–",
            row.width,
            row.statistic,
            interval,
            row.threshold,
            str(row.n),
            f"{row.n_undefined} ({row.n_diverged})",
            verdict,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if table.empty:
        lines.append("| no runs any claim is about | | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def write_summary(runs: pd.DataFrame, out: str | os.PathLike, sections: Sequence[str] = ()) -> Path:
    """Write summary.md (with `sections` after the paper's values) into `out`; return its path."""
    path = Path(out) / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(runs, sections))
    return path
