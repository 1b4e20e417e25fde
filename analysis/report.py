"""Load the Parquet tables for the figures, and write figures/summary.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.collect import CURVE_COLUMNS, CURVES_FILE, RUNS_FILE
from analysis.conditions import ordered_train_sizes, with_conditions
from analysis.pair import recover
from analysis.paper_values import PAPER_VALUES, PaperValue
from vocabulary import DATASET_ORDER, INDEX_NAMES, dataset_label, variant_order

CONDITION_COLUMNS = ("dataset", "block", "variation", "train_size", "width", "variant")
SUMMARY_METRICS = (("error", "error"), ("ci", "CI"), ("ri", "RI"), ("di", "DI"))


def load_results(
    directory: str | os.PathLike, error: str = "image", exclude_diverged: bool = False
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Return (runs with condition columns, curves) from a results directory, or (None, None)."""
    directory = Path(directory)
    if directory.is_dir():
        recover(directory)  # finish an aggregation interrupted after its commit point
    runs_path, curves_path = directory / RUNS_FILE, directory / CURVES_FILE
    if not runs_path.exists():
        return None, None
    runs = with_conditions(pd.read_parquet(runs_path), error, exclude_diverged)
    if curves_path.exists():
        curves = pd.read_parquet(curves_path)
    else:
        curves = pd.DataFrame(columns=list(CURVE_COLUMNS))
    return runs, curves


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


def paper_comparison(runs: pd.DataFrame) -> list[tuple[PaperValue, str, int]]:
    """Return (paper value, our mean +/- sd as text, n runs) for each value the paper states."""
    rows = []
    for item in PAPER_VALUES:
        values = _matching(runs, item.levels)[item.column].dropna()
        remark = ""
        if values.empty and item.relaxable:
            # The paper's dataset or width is absent: compare on those present, and say so.
            levels = {k: v for k, v in item.levels.items() if k not in item.relaxable}
            matched = _matching(runs, levels).dropna(subset=[item.column])
            values = matched[item.column]
            if len(values):
                datasets = ", ".join(dataset_label(d) for d in sorted(matched["dataset"].unique()))
                widths = ", ".join(str(w) for w in sorted(matched["width"].unique()))
                remark = f" (on {datasets}, width {widths})"
        percent = item.column == "error"
        ours = _mean_sd(values.mean(), values.std(), len(values), percent) + remark
        rows.append((item, ours, len(values)))
    return rows


def _matching(runs: pd.DataFrame, levels: dict[str, object]) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    for column, level in levels.items():
        keep &= runs[column] == level
    return runs[keep]


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
    for item, ours, count in paper_comparison(runs):
        paper = f"{item.value * 100:.3g}%" if item.column == "error" else f"{item.value:g}"
        ours = ours if count else "no runs"
        lines.append(
            f"| {item.quantity} | {item.relation} {paper} | {ours} | {count} | {item.source} |"
        )
    for section in sections:  # e.g. the claims table (analysis/claims.py)
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


def write_summary(runs: pd.DataFrame, out: str | os.PathLike, sections: Sequence[str] = ()) -> Path:
    """Write summary.md (with `sections` after the paper's values) into `out`; return its path."""
    path = Path(out) / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(runs, sections))
    return path
