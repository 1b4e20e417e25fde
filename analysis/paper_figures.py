"""The paper's figures (Fig 1-4, S1-S5) drawn with seaborn from the Parquet tables alone.

Each `figN(runs, curves)` returns a matplotlib Figure (no pyplot state, Agg canvas) or raises
NothingToDrawError. `runs` is `runs.parquet` passed through `conditions.with_conditions`. A figure
whose conditions are partly missing is drawn with what exists and says what is missing in a red
note at its foot; when the paper's dataset is absent, it is drawn on the datasets present and
says so in its title.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator

from analysis import toy
from analysis.conditions import (
    FULL,
    INDEX_LABELS,
    PAPER_VARIANTS,
    PAPER_WIDTHS,
    STANDARD,
    dataset_label,
    missing_note,
    ordered_datasets,
    ordered_train_sizes,
    ordered_variants,
)
from pipeline.tasks import task_for

NOTE_COLOUR = "firebrick"
CURVE_TITLES = {
    "readout": "early read-out",
    "dropout": "block drop-out",
    "extra": "extra evaluations",
}
CURVE_XLABELS = {"readout": "block t", "dropout": "dropped block t", "extra": "extra evaluations k"}
PAPER_VARIATIONS = ("BN γ 0.1", "triangular kernel", "first 5 uncoupled")
DIGITCLUTTER = ("digitclutter-3", "digitclutter-4", "digitclutter-5")


class NothingToDrawError(Exception):
    """A figure has no runs of any of its conditions."""


@contextlib.contextmanager
def _style() -> Iterator[None]:
    # Style applies when axes are created, so figures are built inside this context.
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global figure manager
    return fig


def _notes(fig: Figure, notes: Sequence[str], target: SubFigure | None = None) -> None:
    """Write what is missing or substituted at the foot of the figure (red, one line each)."""
    text = "\n".join(n for n in notes if n)
    if not text:
        return
    if target is not None:  # a strip of its own: a layout rect would shift subfigures
        target.text(0.01, 0.95, text, color=NOTE_COLOUR, fontsize=8, ha="left", va="top")
        return
    fig.text(0.01, 0.0, text, color=NOTE_COLOUR, fontsize=8, ha="left", va="bottom")
    # Room for the note lines: 8 pt text is about 0.15 inch a line.
    bottom = (0.15 * (text.count("\n") + 1) + 0.05) / fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # (left, bottom, width, height)


def _panel_note(ax: Axes, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=NOTE_COLOUR,
        fontsize=9,
        wrap=True,
    )


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


def select(runs: pd.DataFrame, **levels: object) -> pd.DataFrame:
    """Return the runs whose condition columns equal the given levels (None: any)."""
    keep = pd.Series(True, index=runs.index)
    for column, level in levels.items():
        if level is not None:
            keep &= runs[column] == level
    return runs[keep]


def coupling_panel(
    ax: Axes,
    data: pd.DataFrame,
    y: str,
    palette: dict[int, tuple],
    variants: Sequence[str] | None = None,
    reference: pd.DataFrame | None = None,
) -> None:
    """Draw y against the variant (x) per width: instances as dots, mean +/- sd as a line.

    Lines are labelled "width W"; a `reference` (e.g. the standard training) is drawn dashed,
    labelled "_reference width W".
    """
    variants = list(variants or ordered_variants(data["variant"]))
    position = {v: i for i, v in enumerate(variants)}
    widths = sorted(data["width"].unique())
    for j, width in enumerate(widths):
        offset = 0.08 * (j - (len(widths) - 1) / 2)
        colour = palette[width]
        if reference is not None:
            ref = _means(reference[reference["width"] == width], y, position)
            if len(ref):
                ax.plot(
                    ref.index + offset,
                    ref["mean"],
                    "--",
                    color=colour,
                    alpha=0.5,
                    label=f"_reference width {width}",
                )
        mine = data[(data["width"] == width) & data[y].notna()]
        xs = mine["variant"].map(position).astype(float) + offset
        ax.scatter(xs, mine[y], s=12, color=colour, alpha=0.35, linewidths=0, label="_instances")
        means = _means(mine, y, position)
        if len(means):
            ax.plot(
                means.index + offset,
                means["mean"],
                "o-",
                color=colour,
                ms=5,
                label=f"width {width}",
            )
            ax.errorbar(
                means.index + offset,
                means["mean"],
                yerr=means["sd"].fillna(0),
                fmt="none",
                ecolor=colour,
                capsize=2,
                label="_sd",
            )
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(variants) - 0.5)
    ax.set_xlabel("coupling (initialisation)")
    ax.set_ylabel(INDEX_LABELS.get(y, "test error" if y == "error" else y))
    unindexed = int(data[y].isna().sum())
    if unindexed:
        ax.text(
            0.02,
            0.98,
            f"{unindexed} run(s) at chance: no index",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            color=NOTE_COLOUR,
        )


def _means(data: pd.DataFrame, y: str, position: dict[str, int]) -> pd.DataFrame:
    data = data[data[y].notna() & data["variant"].isin(position)]
    stats = data.groupby("variant")[y].agg(["mean", "std"]).rename(columns={"std": "sd"})
    stats.index = stats.index.map(position)
    return stats.sort_index()


def _legend(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, frameon=True, loc="best")


def _coverage(data: pd.DataFrame, widths: bool = True, variants: bool = True) -> str:
    expected, present = {}, {}
    if widths:
        expected["width"], present["width"] = PAPER_WIDTHS, data["width"].unique()
    if variants:
        expected["variant"], present["variant"] = PAPER_VARIANTS, data["variant"].unique()
    return missing_note(expected, present)


def _main(runs: pd.DataFrame, block: str = "ordinary") -> pd.DataFrame:
    """Return the runs of the main design: this block, standard training, full training set."""
    return select(runs, block=block, variation=STANDARD, train_size=FULL)


# ---------------------------------------------------------------- Fig 1: toy inverse problem


def fig1(config: toy.ToyConfig | None = None, paths: pd.DataFrame | None = None) -> Figure:
    """Fig 1b-d: trajectories of the toy inverse problem, a dropped block, extra evaluations."""
    config = config or toy.ToyConfig()
    paths = paths if paths is not None else toy.trajectories(config)
    colours = dict(zip(toy.METHODS, sns.color_palette("colorblind", len(toy.METHODS)), strict=True))
    with _style():
        fig = _figure(13, 4.4)
        axes = fig.subplots(1, 3, sharex=True, sharey=True)
        titles = (
            "b  trajectories across blocks",
            f"c  block {config.dropped_block} dropped",
            f"d  last block applied {config.extra_evaluations} more times",
        )
        for ax, condition, title in zip(axes, ("normal", "dropped", "extra"), titles, strict=True):
            for method in toy.METHODS:
                path = paths[(paths["method"] == method) & (paths["condition"] == condition)]
                if path.empty:
                    continue
                path = path.sort_values("step")
                dashed = condition == "extra" and method != "error-corrective"
                ax.plot(
                    path["z1"],
                    path["z2"],
                    "--" if dashed else "-",
                    marker="o",
                    ms=3,
                    color=colours[method],
                    label=toy.LABELS[method],
                )
                if condition != "normal":  # the unperturbed trajectory, faint, for comparison
                    base = paths[(paths["method"] == method) & (paths["condition"] == "normal")]
                    ax.plot(
                        base["z1"],
                        base["z2"],
                        "-",
                        color=colours[method],
                        alpha=0.2,
                        label="_unperturbed",
                    )
            x = toy.forward_model(np.asarray(config.example), config.alphas)
            ax.plot(*config.example, "kx", ms=10, mew=2, label="true z")
            ax.plot(*x, "k^", ms=6, label="input x")
            ax.set_title(title, loc="left")
            ax.set_xlabel("estimate $\\hat z_1$")
        axes[0].set_ylabel("estimate $\\hat z_2$")
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(
            f"Fig 1  inverting f(z) = ({config.alphas[0]:g} z1, {config.alphas[1]:g} z2): "
            f"{config.blocks} blocks; algorithm eps = {config.eps}",
        )
    return fig


# ---------------------------------------------------------------- Fig 2: ordinary ResNet


def fig2(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Fig 2: perturbation curves per stage, index values per stage, error against CI and DI."""
    pool = select(_main(runs), variant="non-rec.")
    if pool.empty:
        raise NothingToDrawError("no non-recurrent ordinary ResNet with standard training")
    (dataset,), dataset_note = choose(ordered_datasets(pool["dataset"]), ["cifar10"], "dataset")
    pool = pool[pool["dataset"] == dataset]
    counts = pool["width"].value_counts()
    widths = sorted(counts.index, key=lambda w: (-counts[w], abs(w - 16)))
    (width,), width_note = choose(widths, [16], "width")
    chosen = pool[pool["width"] == width].sort_values(["seed", "run_id"])
    chance = task_for(dataset).chance_error
    emphasised = chosen["run_id"].iloc[0]
    with _style():
        fig = _figure(13, 12.8)
        top, bottom, foot = fig.subfigures(3, 1, height_ratios=[1.5, 1, 0.08])
        # The title goes into the top subfigure: a figure suptitle would overlap its title.
        title = (
            f"Fig 2  ordinary ResNet, non-recurrent, {dataset_label(dataset)}, width {width}, "
            f"{len(chosen)} instance(s)"
        )
        _fig2_curves(top, chosen, curves, chance, emphasised, title)
        _fig2_indices(bottom, chosen)
        notes = [dataset_note, width_note]
        if len(chosen) < 6:
            notes.append(f"missing: instances ({len(chosen)} of the paper's 6)")
        _notes(fig, notes, foot)
    return fig


def _fig2_curves(
    sub: SubFigure,
    chosen: pd.DataFrame,
    curves: pd.DataFrame,
    chance: float,
    emphasised: str,
    title: str,
) -> None:
    sub.suptitle(f"{title}\na  perturbation curves (one instance emphasised)", x=0.01, ha="left")
    axes = sub.subplots(3, 3, sharey=True)
    mine = curves[curves["run_id"].isin(chosen["run_id"])]
    for col, curve in enumerate(("readout", "dropout", "extra")):
        for stage in (1, 2, 3):
            ax = axes[stage - 1, col]
            part = mine[(mine["curve"] == curve) & (mine["stage"] == stage)]
            background = part[part["run_id"] != emphasised]
            if not background.empty:
                sns.lineplot(
                    background,
                    x="step",
                    y="error",
                    units="run_id",
                    estimator=None,
                    color="0.6",
                    alpha=0.6,
                    lw=0.8,
                    ax=ax,
                    label="_instances",
                )
            front = part[part["run_id"] == emphasised]
            if not front.empty:
                sns.lineplot(
                    front,
                    x="step",
                    y="error",
                    color="C0",
                    lw=2,
                    marker="o",
                    ms=3,
                    ax=ax,
                    label="_emphasised",
                )
            ax.axhline(chance, ls=":", color="k", lw=1, label="_chance")
            ax.set_title(f"{CURVE_TITLES[curve]}, stage {stage}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(CURVE_XLABELS[curve] if stage == 3 else "")
            ax.set_ylabel("test error" if col == 0 else "")
    axes[0, 0].text(
        0.98,
        chance,
        "chance",
        transform=axes[0, 0].get_yaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=7,
    )


def _fig2_indices(sub: SubFigure, chosen: pd.DataFrame) -> None:
    left, right = sub.subfigures(1, 2, width_ratios=[3, 2])
    left.suptitle("b  index values per stage", x=0.01, ha="left")
    right.suptitle("c  error against CI and DI", x=0.01, ha="left")
    positions = ["stage 1", "stage 2", "stage 3", "mean"]
    for ax, index in zip(left.subplots(1, 3, sharey=True), ("ci", "ri", "di"), strict=True):
        columns = [f"{index}_stage{s}" for s in (1, 2, 3)] + [index]
        for i, column in enumerate(columns):
            values = chosen[column].dropna() if column in chosen else pd.Series(dtype=float)
            ax.scatter(
                np.full(len(values), i),
                values,
                s=14,
                alpha=0.35,
                color="C0",
                linewidths=0,
                label="_instances",
            )
            if len(values):
                ax.scatter([i], [values.mean()], s=70, color="C0", label="_mean")
        ax.set_xticks(range(4), positions, rotation=30)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(INDEX_LABELS[index], fontsize=9)
    for ax, index in zip(right.subplots(1, 2, sharey=True), ("ci", "di"), strict=True):
        sns.scatterplot(chosen, x=index, y="error", ax=ax, color="C0", s=30, label="_instances")
        ax.set_xlabel(INDEX_LABELS[index])
        ax.set_ylabel("test error")


# ---------------------------------------------------------------- Fig 3 / Fig 4 / S1 / S2


def _main_dataset(runs: pd.DataFrame) -> tuple[str, str]:
    (dataset,), note = choose(ordered_datasets(runs["dataset"]), ["cifar10"], "dataset")
    return dataset, note


def fig3(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """Fig 3: indices and error against coupling per width; error against CI and DI."""
    main = _main(runs)
    if main.empty:
        raise NothingToDrawError("no ordinary ResNet with standard training")
    dataset, note = _main_dataset(main)
    data = main[main["dataset"] == dataset]
    palette = width_palette(main["width"])
    with _style():
        fig = _figure(11, 12)
        axes = fig.subplots(3, 2)
        for ax, index in zip(axes[0], ("ci", "di"), strict=True):
            coupling_panel(ax, data, index, palette)
            ax.set_title(f"a  {INDEX_LABELS[index]}, {dataset_label(dataset)}", loc="left")
        datasets, error_note = choose(
            ordered_datasets(main["dataset"]), ["cifar10", "digitclutter-5"], "dataset", 2
        )
        for ax, name in zip(axes[1], [*datasets, None][:2], strict=True):
            if name is None:
                _panel_note(ax, "missing: Digitclutter-5 (no second dataset)")
                ax.set_title("b  error", loc="left")
                continue
            coupling_panel(ax, main[main["dataset"] == name], "error", palette)
            ax.set_title(f"b  error, {dataset_label(name)}", loc="left")
        for ax, index in zip(axes[2], ("ci", "di"), strict=True):
            _error_against_index(ax, data, index, palette)
            ax.set_title(f"c  error against {index.upper()}, {dataset_label(dataset)}", loc="left")
        _legend(axes[0, 0])
        fig.suptitle("Fig 3  soft gradient coupling: iterative convergence and performance")
        _notes(fig, [note, error_note, _coverage(main)])
    return fig


def _error_against_index(ax: Axes, data: pd.DataFrame, index: str, palette: dict) -> None:
    """Draw condition means of error against an index; a line joins models of one width."""
    order = ordered_variants(data["variant"])
    means = (
        data.dropna(subset=[index])
        .groupby(["width", "variant"])[[index, "error"]]
        .mean()
        .reset_index()
    )
    markers = dict(zip(order, "osD^vP*X", strict=False))
    for width, part in means.groupby("width"):
        part = part.sort_values("variant", key=lambda s: s.map(order.index))
        ax.plot(part[index], part["error"], "-", color=palette[width], label=f"width {width}")
        for variant, x, y in zip(part["variant"], part[index], part["error"], strict=True):
            ax.scatter(
                [x], [y], marker=markers[variant], color=palette[width], s=30, label=f"_{variant}"
            )
    # one legend entry per marker (variant), in black
    for variant in order:
        ax.scatter([], [], marker=markers[variant], color="0.3", label=variant)
    ax.set_xlabel(INDEX_LABELS[index])
    ax.set_ylabel("test error")
    _legend(ax)


def _block_figure(
    runs: pd.DataFrame, block: str, indices: Sequence[str], title: str, error: bool
) -> Figure:
    main = _main(runs, block)
    if main.empty:
        raise NothingToDrawError(f"no {block} runs with standard training")
    dataset, note = _main_dataset(main)
    data = main[main["dataset"] == dataset]
    palette = width_palette(runs["width"])
    ordinary = select(_main(runs), dataset=dataset)
    panels = len(indices) + int(error)
    with _style():
        fig = _figure(4.2 * panels, 4.6)
        axes = np.atleast_1d(fig.subplots(1, panels))
        letters = iter("abcdefg")
        for ax, index in zip(axes, indices, strict=False):
            coupling_panel(ax, data, index, palette)
            ax.set_title(f"{next(letters)}  {INDEX_LABELS[index]}", loc="left")
        if error:
            ax = axes[-1]
            coupling_panel(ax, data, "error", palette, reference=ordinary)
            ax.set_title(f"{next(letters)}  error (dashed: ordinary)", loc="left")
        _legend(axes[0])
        fig.suptitle(f"{title}, {dataset_label(dataset)}")
        _notes(fig, [note, _coverage(main)])
    return fig


def fig4(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """Fig 4: ICR indices (CI, DI) and error against coupling per width."""
    return _block_figure(runs, "ICR", ("ci", "di"), "Fig 4  improperly convergent ResNets", True)


def figs2(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """S2 Fig: PCR indices and error against coupling per width."""
    return _block_figure(
        runs, "PCR", ("ci", "ri", "di"), "S2 Fig  properly convergent ResNets", True
    )


def figs1(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """S1 Fig: Recurrence Index against coupling, (a) ordinary and (b) ICR."""
    blocks = [b for b in ("ordinary", "ICR") if not _main(runs, b).empty]
    if not blocks:
        raise NothingToDrawError("no ordinary or ICR runs with standard training")
    palette = width_palette(runs["width"])
    notes = []
    with _style():
        fig = _figure(9, 4.6)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, block, letter in zip(axes, ("ordinary", "ICR"), "ab", strict=True):
            main = _main(runs, block)
            if main.empty:
                _panel_note(ax, f"missing: {block} runs")
                ax.set_title(f"{letter}  {block}", loc="left")
                continue
            dataset, note = _main_dataset(main)
            coupling_panel(ax, main[main["dataset"] == dataset], "ri", palette)
            ax.axhline(1.0, ls=":", color="k", lw=1, label="_paper: near 1")
            ax.set_title(f"{letter}  {block}, {dataset_label(dataset)}", loc="left")
            notes += [note, _coverage(main)]
        axes[1].set_ylabel("")  # shared with panel a
        _legend(axes[0])
        fig.suptitle("S1 Fig  Recurrence Index (dotted: 1, the paper's value)")
        _notes(fig, sorted(set(n for n in notes if n)))
    return fig


# ---------------------------------------------------------------- S3: other tasks and sizes


def figs3(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """S3 Fig: error against coupling on Digitclutter variants and sizes and further datasets."""
    ordinary = select(runs, block="ordinary", variation=STANDARD)
    panels: list[tuple[str, pd.DataFrame]] = []
    missing = []
    for dataset in DIGITCLUTTER:
        data = ordinary[ordinary["dataset"] == dataset]
        if data.empty:
            missing.append(dataset_label(dataset))
        for size in sorted(ordered_train_sizes(data["train_size"]), key=lambda s: s != FULL):
            label = "" if size == FULL else f", {size} training images"
            panels.append((f"a  {dataset_label(dataset)}{label}", data[data["train_size"] == size]))
    for letter, dataset, sizes in (
        ("b", "cifar100", [FULL]),
        ("c", "cifar10", None),
        ("d", "mnist", [FULL]),
    ):
        data = ordinary[ordinary["dataset"] == dataset]
        present = [s for s in ordered_train_sizes(data["train_size"]) if s != FULL]
        wanted = present if sizes is None else sizes
        if sizes is None and not present:
            missing.append("CIFAR-10 with few training data")
        for size in wanted:
            part = data[data["train_size"] == size]
            if part.empty:
                missing.append(dataset_label(dataset))
                continue
            label = "" if size == FULL else f", {size} training images"
            panels.append((f"{letter}  {dataset_label(dataset)}{label}", part))
    if not panels:
        raise NothingToDrawError("no ordinary runs on any dataset")
    palette = width_palette(runs["width"])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    with _style():
        fig = _figure(4.2 * columns, 4.0 * rows + 0.6)
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
        for ax, (title, data) in zip(axes, panels, strict=False):
            coupling_panel(ax, data, "error", palette)
            ax.set_title(title, loc="left", fontsize=9)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        _legend(axes[0])
        fig.suptitle("S3 Fig  error of gradient-coupled ResNets on further tasks")
        _notes(fig, ["missing: " + ", ".join(missing) if missing else ""])
    return fig


# ---------------------------------------------------------------- S4 / S5: training variations


def _variations(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str], str]:
    ordinary = select(runs, block="ordinary", train_size=FULL)
    varied = ordinary[ordinary["variation"] != STANDARD]
    if varied.empty:
        raise NothingToDrawError("no runs with a training variation (BN γ, kernel, first coupled)")
    dataset, note = _main_dataset(varied)
    varied = varied[varied["dataset"] == dataset]
    standard = select(ordinary, variation=STANDARD, dataset=dataset)
    names = sorted(varied["variation"].unique(), key=lambda v: (v not in PAPER_VARIATIONS, v))
    absent = [v for v in PAPER_VARIATIONS if v not in names]
    missing = "missing: " + ", ".join(absent) if absent else ""
    return varied, standard, note, names, missing


def figs4(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """S4 Fig: error against coupling for BN gamma 0.1, triangular kernel, first five uncoupled."""
    varied, standard, note, names, missing = _variations(runs)
    palette = width_palette(runs["width"])
    with _style():
        fig = _figure(4.2 * len(names), 4.6)
        axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
        for ax, name, letter in zip(axes, names, "abcdefgh", strict=False):
            data = varied[varied["variation"] == name]
            coupling_panel(ax, data, "error", palette, reference=standard)
            ax.set_title(f"{letter}  {name}", loc="left")
        _legend(axes[0])
        fig.suptitle(
            f"S4 Fig  training variations, {dataset_label(varied['dataset'].iloc[0])} "
            "(dashed: standard training)"
        )
        _notes(fig, [note, missing])
    return fig


def figs5(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Figure:
    """S5 Fig: CI, RI and DI against coupling for each training variation."""
    varied, standard, note, names, missing = _variations(runs)
    palette = width_palette(runs["width"])
    with _style():
        fig = _figure(12, 3.8 * len(names) + 0.6)
        axes = fig.subplots(len(names), 3, squeeze=False)
        for row, name in enumerate(names):
            data = varied[varied["variation"] == name]
            for ax, index in zip(axes[row], ("ci", "ri", "di"), strict=True):
                coupling_panel(ax, data, index, palette, reference=standard)
                ax.set_title(f"{name}: {INDEX_LABELS[index]}", loc="left", fontsize=9)
        _legend(axes[0, 0])
        fig.suptitle(
            f"S5 Fig  indices under training variations, "
            f"{dataset_label(varied['dataset'].iloc[0])} (dashed: standard training)"
        )
        _notes(fig, [note, missing])
    return fig


FIGURES: dict[str, Callable[..., Figure]] = {
    "fig2": fig2,
    "fig3": fig3,
    "fig4": fig4,
    "s1": figs1,
    "s2": figs2,
    "s3": figs3,
    "s4": figs4,
    "s5": figs5,
}
ALL_FIGURES = ("fig1", *FIGURES)


def draw_all(
    runs: pd.DataFrame | None,
    curves: pd.DataFrame | None,
    out: str,
    only: Sequence[str] | None = None,
    report: Callable[[str], None] = print,
    toy_config: toy.ToyConfig | None = None,
) -> dict[str, Figure]:
    """Draw the chosen figures into `out` as PNG and PDF; return {name: Figure} of those drawn."""
    from pathlib import Path

    names = list(only or ALL_FIGURES)
    unknown = [n for n in names if n not in ALL_FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}: allowed are {list(ALL_FIGURES)}")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for name in names:
        try:
            if name == "fig1":
                fig = fig1(toy_config)
            elif runs is None or runs.empty:
                raise NothingToDrawError("no runs in the results")
            else:
                fig = FIGURES[name](runs, curves)
        except NothingToDrawError as reason:
            report(f"skipped {name}: {reason}")
            continue
        # Type 42 fonts keep the PDF's text editable; no timestamp keeps reruns identical.
        with mpl.rc_context({"pdf.fonttype": 42}):
            fig.savefig(directory / f"{name}.png", dpi=150, metadata={"Software": None})
            fig.savefig(directory / f"{name}.pdf", metadata={"CreationDate": None})
        report(f"wrote {directory / name}.png and .pdf")
        drawn[name] = fig
    return drawn
