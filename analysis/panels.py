"""What every paper figure shares: its style, red notes on what is missing, and the coupling panel.

A figure is a `PaperFigure`: a matplotlib Figure (Agg canvas, no pyplot state) that also keeps
`data`, the tidy rows each of its panels drew, so tests and readers check numbers, not pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure

from analysis.conditions import missing_note, ordered_variants, select
from vocabulary import FULL, INDEX_LABELS, PAPER_VARIANTS, STANDARD, WIDTHS, dataset_label

NOTE_COLOUR = "firebrick"
DRAWN_COLUMNS = ("series", "run_id", "width", "variant", "value")


class NothingToDrawError(Exception):
    """A figure has no runs of any of its conditions."""


class PaperFigure(Figure):
    """A Figure that keeps the tidy data of each panel: {panel key: the rows it drew}."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.data: dict[str, pd.DataFrame] = {}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the figures' seaborn style; axes take it when created, so build figures inside."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def figure(width: float, height: float) -> PaperFigure:
    """Return an empty figure of this size in inches, with its own Agg canvas."""
    fig = PaperFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global figure manager
    return fig


def notes(fig: Figure, lines: Sequence[str], target: SubFigure | None = None) -> None:
    """Write what is missing or substituted at the foot of the figure (red, one line each)."""
    text = "\n".join(n for n in lines if n)
    if not text:
        return
    if target is not None:  # a strip of its own: a layout rect would shift subfigures
        target.text(0.01, 0.95, text, color=NOTE_COLOUR, fontsize=8, ha="left", va="top")
        return
    fig.text(0.01, 0.0, text, color=NOTE_COLOUR, fontsize=8, ha="left", va="bottom")
    # Room for the note lines: 8 pt text is about 0.15 inch a line.
    bottom = (0.15 * (text.count("\n") + 1) + 0.05) / fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # (left, bottom, width, height)


def panel_note(ax: Axes, text: str) -> None:
    """Replace an empty panel's content by a red note."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")
    ax.texts[-1].set(color=NOTE_COLOUR, fontsize=9, wrap=True)


def width_palette(widths: Sequence[int]) -> dict[int, tuple]:
    """Return a colour per width (light to dark with width), the same in every panel."""
    widths = sorted(set(int(w) for w in widths))
    colours = sns.color_palette("viridis_r", n_colors=max(len(widths), 2))
    return {w: colours[i] for i, w in enumerate(widths)}


def choose(
    present: Sequence[object], preferred: Sequence[object], what: str, count: int = 1
) -> tuple[list, str]:
    """Return up to `count` preferred levels that exist (else the first present) and a note."""
    chosen = [p for p in preferred if p in present][:count]
    note = ""
    if len(chosen) < count:
        fill = [p for p in present if p not in chosen][: count - len(chosen)]
        absent = [p for p in preferred if p not in present]
        if fill:
            shown = ", ".join(_level(p) for p in fill)
            note = f"{what} {', '.join(_level(p) for p in absent)} absent: drawn with {shown}"
        chosen += fill
    return chosen, note


def _level(value: object) -> str:
    return dataset_label(value) if isinstance(value, str) else str(value)


def main_design(runs: pd.DataFrame, block: str = "ordinary") -> pd.DataFrame:
    """Return the runs of the main design: this block, standard training, full training set."""
    return select(runs, block=block, variation=STANDARD, train_size=FULL)


def coverage(data: pd.DataFrame, widths: bool = True, variants: bool = True) -> str:
    """Return the note naming the paper's widths and variants that `data` lacks, or ""."""
    expected, present = {}, {}
    if widths:
        expected["width"], present["width"] = WIDTHS, data["width"].unique()
    if variants:
        expected["variant"], present["variant"] = PAPER_VARIANTS, data["variant"].unique()
    return missing_note(expected, present)


def _drawn(data: pd.DataFrame, y: str, series: str, variants: Sequence[str]) -> pd.DataFrame:
    rows = data[data[y].notna() & data["variant"].isin(variants)]
    rows = rows.assign(series=series, value=rows[y].astype(float))
    return rows[list(DRAWN_COLUMNS)].reset_index(drop=True)


def coupling_panel(
    ax: Axes,
    data: pd.DataFrame,
    y: str,
    palette: dict[int, tuple],
    reference: pd.DataFrame | None = None,
    legend: bool = False,
) -> pd.DataFrame:
    """Draw y against the variant per width: each run a dot, mean +/- sd a line; return the rows.

    A `reference` (e.g. the standard training) is drawn as dashed means at the same widths.
    The rows returned are tidy: series ("runs" or "reference"), run_id, width, variant, value.
    """
    variants = ordered_variants(data["variant"])
    widths = sorted(data["width"].unique())
    runs = _drawn(data, y, "runs", variants)
    ref = _drawn(reference, y, "reference", variants) if reference is not None else runs[:0]
    ref = ref[ref["width"].isin(widths)]
    # Points of one width sit side by side, as the strip's dodge places them.
    dodge = 0.8 * (1 - 1 / len(widths)) if len(widths) > 1 else False
    shared = dict(x="variant", y="value", hue="width", order=variants, ax=ax)
    shared |= dict(hue_order=widths, palette=palette)
    if not ref.empty:
        dashed = dict(errorbar=None, linestyles="--", markers="", legend=False)
        sns.pointplot(ref, dodge=dodge, **dashed, **shared)
        for line in ax.lines:
            line.set(alpha=0.5, label=f"_reference {line.get_label()}")
    if not runs.empty:
        sns.stripplot(runs, dodge=True, jitter=0.05, size=3, alpha=0.35, legend=False, **shared)
        sns.pointplot(runs, errorbar="sd", capsize=0.1, dodge=dodge, legend=legend, **shared)
        if legend:
            ax.legend(title="width", fontsize=7, title_fontsize=7, loc="best")
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(variants) - 0.5)
    ax.set_xlabel("coupling (initialisation)")
    ax.set_ylabel(INDEX_LABELS.get(y, "test error" if y == "error" else y))
    lines = []
    unindexed = int(data[y].isna().sum())
    if unindexed:
        lines.append(f"{unindexed} run(s) at chance: no index")
    lines += diverged_counts(data)
    if lines:
        ax.text(0.02, 0.98, "\n".join(lines), transform=ax.transAxes)
        ax.texts[-1].set(va="top", fontsize=7, color=NOTE_COLOUR)
    return pd.concat([runs, ref], ignore_index=True)


def diverged_counts(data: pd.DataFrame) -> list[str]:
    """Return "rec. 1, width 16: n = 3 (1 diverged)" for each condition with a diverged run."""
    if "diverged" not in data or not data["diverged"].any():
        return []
    grouped = data.groupby(["variant", "width"])["diverged"].agg(["size", "sum"])
    return [
        f"{variant}, width {width}: n = {n} ({diverged} diverged)"
        for (variant, width), n, diverged in zip(
            grouped.index, grouped["size"], grouped["sum"], strict=True
        )
        if diverged
    ]
