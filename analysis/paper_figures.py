"""The paper's figures (Fig 1-4, S1-S5), and Fig 3's panels on Pathfinder, from the Parquet tables.

Each `figN(runs, curves)` returns a `panels.PaperFigure` (a matplotlib Figure, no pyplot state,
whose `data` holds the tidy rows each panel drew) or raises NothingToDrawError. `runs` is
`runs.parquet` passed through `conditions.with_conditions`. A figure whose conditions are partly
missing is drawn with what exists and says what is missing in a red note at its foot; when the
paper's dataset is absent, it is drawn on the datasets present and says so in its title.
`draw_all` gives the paper's figures the runs on the paper's datasets only; the Pathfinder runs
(beyond the paper) are drawn by `pathfinder`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator

from analysis import toy
from analysis.conditions import (
    ordered_datasets,
    ordered_train_sizes,
    ordered_variants,
    select,
)
from analysis.panels import (
    NothingToDrawError,
    PaperFigure,
    choose,
    coupling_panel,
    coverage,
    figure,
    main_design,
    notes,
    panel_note,
    style,
    width_palette,
)
from pipeline.tasks import task_for
from vocabulary import (
    BLOCK_LABELS,
    CONVERGENT_BLOCKS,
    CURVES,
    DIGITCLUTTER,
    FULL,
    INDEX_LABELS,
    INDEX_NAMES,
    PAPER_DATASETS,
    PATHFINDER,
    STANDARD,
    dataset_label,
)

CURVE_TITLES = {
    "readout": "early read-out",
    "dropout": "block drop-out",
    "extra": "extra evaluations",
}
CURVE_XLABELS = {"readout": "block t", "dropout": "dropped block t", "extra": "extra evaluations k"}
PAPER_VARIATIONS = ("BN γ 0.1", "triangular kernel", "first 5 uncoupled")
# Fig 2's height in inches with the paper's three stages, and its rows' height ratios: the
# curves of one stage to the index panels (b, c); each further stage adds a row.
FIG2_HEIGHT = 12.8
FIG2_STAGE_RATIO = 0.5
FIG2_STAGE_INCHES = FIG2_HEIGHT * FIG2_STAGE_RATIO / (3 * FIG2_STAGE_RATIO + 1 + 0.08)
STAGE_INDEX_COLUMN = re.compile(rf"(?:{'|'.join(INDEX_NAMES)})_stage(\d+)")  # ci_stage1, ...
# Fig 2a: every instance's curve grey, one instance's in colour.
GREY_CURVE = dict(estimator=None, color="0.6", alpha=0.6, lw=0.8)
EMPHASISED_CURVE = dict(estimator=None, color="C0", lw=2, marker="o", ms=3)


# ---------------------------------------------------------------- Fig 1: toy inverse problem


def fig1(config: toy.ToyConfig | None = None, paths: pd.DataFrame | None = None) -> PaperFigure:
    """Fig 1b-d: trajectories of the toy inverse problem, a dropped block, extra evaluations."""
    config = config or toy.ToyConfig()
    paths = paths if paths is not None else toy.trajectories(config)
    colours = dict(zip(toy.METHODS, sns.color_palette("colorblind", len(toy.METHODS)), strict=True))
    x = toy.forward_model(np.asarray(config.example), config.alphas)
    with style():
        fig = figure(13, 4.4)
        axes = fig.subplots(1, 3, sharex=True, sharey=True)
        titles = (
            "b  trajectories across blocks",
            f"c  block {config.dropped_block} dropped",
            f"d  last block applied {config.extra_evaluations} more times",
        )
        panels = zip(axes, ("normal", "dropped", "extra"), "bcd", titles, strict=True)
        for ax, condition, letter, title in panels:
            drawn = paths[paths["condition"] == condition].sort_values(["method", "step"])
            fig.data[letter] = drawn.reset_index(drop=True)
            for method in toy.METHODS:
                path = drawn[drawn["method"] == method]
                if path.empty:
                    continue
                if condition != "normal":  # the unperturbed trajectory, faint, for comparison
                    base = paths[(paths["method"] == method) & (paths["condition"] == "normal")]
                    ax.plot(base["z1"], base["z2"], "-", color=colours[method], alpha=0.2)
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


def fig2(runs: pd.DataFrame, curves: pd.DataFrame) -> PaperFigure:
    """Fig 2: perturbation curves per stage, index values per stage, error against CI and DI."""
    pool = select(main_design(runs), variant="non-rec.")
    if pool.empty:
        raise NothingToDrawError("no non-recurrent ordinary ResNet with standard training")
    (dataset,), dataset_note = choose(ordered_datasets(pool["dataset"]), ["cifar10"], "dataset")
    pool = pool[pool["dataset"] == dataset]
    counts = pool["width"].value_counts()
    widths = sorted(counts.index, key=lambda w: (-counts[w], abs(w - 16)))
    (width,), width_note = choose(widths, [16], "width")
    chosen = pool[pool["width"] == width].sort_values(["seed", "run_id"])
    title = (
        f"Fig 2  ordinary ResNet, non-recurrent, {dataset_label(dataset)}, width {width}, "
        f"{len(chosen)} instance(s)\na  perturbation curves (one instance emphasised)"
    )
    mine = curves[curves["run_id"].isin(chosen["run_id"])]
    mine = mine.assign(emphasised=mine["run_id"] == chosen["run_id"].iloc[0])
    lines = [dataset_note, width_note]
    if len(chosen) < 6:
        lines.append(f"missing: instances ({len(chosen)} of the paper's 6)")
    return fig2_panels(mine, chosen, task_for(dataset).chance_error, title, lines)


def fig2_panels(
    curves: pd.DataFrame,
    index_rows: pd.DataFrame,
    chance: float,
    title: str,
    lines: Sequence[str] = (),
) -> PaperFigure:
    """Draw Fig 2's panels for any number of stages: a (curves), b (indices), c (error).

    `curves`: the rows of vocabulary.CURVE_COLUMNS with run_id and emphasised (the instance
    in colour); `index_rows`: one row per instance with run_id, the indices per stage
    (ci_stage1, ...) and their means (ci, ...), and error for panel c (without it, no panel c).
    The stages are those the curves or the index values have. `title` goes above panel a,
    `lines` (what is missing) in red at the foot.
    """
    stages = _fig2_stages(curves, index_rows)
    if not stages:
        raise NothingToDrawError("no perturbation curves and no index values to draw")
    with style():
        ratios = [FIG2_STAGE_RATIO * len(stages), 1, 0.08]  # a row per stage, b and c, notes
        fig = figure(13, FIG2_HEIGHT + (len(stages) - 3) * FIG2_STAGE_INCHES)
        top, bottom, foot = fig.subfigures(3, 1, height_ratios=ratios)
        # The title goes into the top subfigure: a figure suptitle would overlap its title.
        top.suptitle(title, x=0.01, ha="left")
        fig.data |= _fig2_curves(top, curves, chance, stages)
        fig.data |= _fig2_indices(bottom, index_rows, stages)
        notes(fig, lines, foot)
    return fig


def _fig2_stages(curves: pd.DataFrame, index_rows: pd.DataFrame) -> list[int]:
    """Return the stages of the curves and of the index values; else those the columns name."""
    named = {
        int(match[1]): column
        for column in index_rows.columns
        if (match := STAGE_INDEX_COLUMN.fullmatch(str(column)))
    }
    valued = {stage for stage, column in named.items() if index_rows[column].notna().any()}
    stages = {int(stage) for stage in curves["stage"].unique()} | valued
    return sorted(stages or named)


def _fig2_curves(
    sub: SubFigure, curves: pd.DataFrame, chance: float, stages: Sequence[int]
) -> dict[str, pd.DataFrame]:
    """Draw each curve of each stage: every instance grey, the emphasised one in colour."""
    axes = sub.subplots(len(stages), 3, sharey=True, squeeze=False)
    drawn = {}
    for col, curve in enumerate(CURVES):
        for row, stage in enumerate(stages):
            ax = axes[row, col]
            part = curves[(curves["curve"] == curve) & (curves["stage"] == stage)]
            drawn[f"a {curve} stage{stage}"] = part.reset_index(drop=True)
            for emphasised, kws in ((False, GREY_CURVE), (True, EMPHASISED_CURVE)):
                lines = part[part["emphasised"] == emphasised]
                if not lines.empty:
                    sns.lineplot(lines, x="step", y="error", units="run_id", ax=ax, **kws)
            ax.axhline(chance, ls=":", color="k", lw=1, label="_chance")
            ax.set_title(f"{CURVE_TITLES[curve]}, stage {stage}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(CURVE_XLABELS[curve] if row == len(stages) - 1 else "")
            ax.set_ylabel("test error" if col == 0 else "")
    axes[0, 0].text(0.98, chance, "chance", transform=axes[0, 0].get_yaxis_transform())
    axes[0, 0].texts[-1].set(ha="right", va="bottom", fontsize=7)
    return drawn


def _fig2_indices(
    sub: SubFigure, chosen: pd.DataFrame, stages: Sequence[int]
) -> dict[str, pd.DataFrame]:
    """Draw each index per stage and its mean (b), and the error against CI and DI (c)."""
    with_errors = "error" in chosen.columns
    left, right = sub.subfigures(1, 2, width_ratios=[3, 2]) if with_errors else (sub, None)
    left.suptitle("b  index values per stage", x=0.01, ha="left")
    positions = [f"stage {s}" for s in stages] + ["mean"]
    drawn = {}
    for ax, index in zip(left.subplots(1, 3, sharey=True), INDEX_NAMES, strict=True):
        columns = [f"{index}_stage{s}" for s in stages] + [index]
        values = chosen.reindex(columns=["run_id", *columns]).rename(
            columns=dict(zip(columns, positions, strict=True))
        )
        tidy = values.melt("run_id", var_name="position", value_name="value").dropna()
        drawn[f"b {index}"] = tidy.reset_index(drop=True)
        if not tidy.empty:
            shared = dict(x="position", y="value", order=positions, color="C0", ax=ax)
            sns.stripplot(tidy, size=4, alpha=0.35, jitter=False, **shared)
            sns.pointplot(tidy, errorbar=None, linestyle="none", markersize=8, **shared)
        ax.set_xticks(range(len(positions)), positions, rotation=30)
        ax.set_ylim(-0.05, 1.05)
        ax.set(title=INDEX_LABELS[index], xlabel="", ylabel="")
        ax.title.set_fontsize(9)
    if right is None:  # one network's error against its indices is no relation
        return drawn
    right.suptitle("c  error against CI and DI", x=0.01, ha="left")
    for ax, index in zip(right.subplots(1, 2, sharey=True), ("ci", "di"), strict=True):
        drawn[f"c {index}"] = chosen[["run_id", index, "error"]].dropna().reset_index(drop=True)
        sns.scatterplot(drawn[f"c {index}"], x=index, y="error", ax=ax, color="C0", s=30)
        ax.set_xlabel(INDEX_LABELS[index])
        ax.set_ylabel("test error")
    return drawn


# ---------------------------------------------------------------- Fig 3 / Fig 4 / S1 / S2


def _main_dataset(runs: pd.DataFrame) -> tuple[str, str]:
    (dataset,), note = choose(ordered_datasets(runs["dataset"]), ["cifar10"], "dataset")
    return dataset, note


def fig3(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """Fig 3: indices and error against coupling per width; error against CI and DI."""
    main = main_design(runs)
    if main.empty:
        raise NothingToDrawError("no ordinary ResNet with standard training")
    dataset, note = _main_dataset(main)
    data = main[main["dataset"] == dataset]
    palette = width_palette(main["width"])
    with style():
        fig = figure(11, 12)
        axes = fig.subplots(3, 2)
        for ax, index in zip(axes[0], ("ci", "di"), strict=True):
            fig.data[f"a {index}"] = coupling_panel(ax, data, index, palette, legend=index == "ci")
            ax.set_title(f"a  {INDEX_LABELS[index]}, {dataset_label(dataset)}", loc="left")
        datasets, error_note = choose(
            ordered_datasets(main["dataset"]), ["cifar10", "digitclutter-5"], "dataset", 2
        )
        for ax, name in zip(axes[1], [*datasets, None][:2], strict=True):
            if name is None:
                panel_note(ax, "missing: Digitclutter-5 (no second dataset)")
                ax.set_title("b  error", loc="left")
                continue
            part = main[main["dataset"] == name]
            fig.data[f"b error {name}"] = coupling_panel(ax, part, "error", palette)
            ax.set_title(f"b  error, {dataset_label(name)}", loc="left")
        for ax, index in zip(axes[2], ("ci", "di"), strict=True):
            fig.data[f"c {index}"] = _error_against_index(ax, data, index, palette)
            ax.set_title(f"c  error against {index.upper()}, {dataset_label(dataset)}", loc="left")
        fig.suptitle("Fig 3  soft gradient coupling: iterative convergence and performance")
        notes(fig, [note, error_note, coverage(main)])
    return fig


def _error_against_index(ax: Axes, data: pd.DataFrame, index: str, palette: dict) -> pd.DataFrame:
    """Draw condition means of error against an index; a line joins the variants of a width."""
    order = ordered_variants(data["variant"])
    means = (
        data.dropna(subset=[index])
        .groupby(["width", "variant"])[[index, "error"]]
        .mean()
        .reset_index()
        .sort_values(
            ["width", "variant"], key=lambda s: s.map(order.index) if s.name == "variant" else s
        )
        .reset_index(drop=True)
    )
    if not means.empty:
        shared = dict(x=index, y="error", hue="width", palette=palette, ax=ax)
        sns.lineplot(means, sort=False, estimator=None, legend=False, **shared)
        markers = dict(zip(order, "osD^vP*X", strict=False))
        sns.scatterplot(means, style="variant", style_order=order, markers=markers, s=40, **shared)
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel(INDEX_LABELS[index])
    ax.set_ylabel("test error")
    return means


def _block_figure(
    runs: pd.DataFrame, block: str, indices: Sequence[str], title: str, reference_block: str
) -> PaperFigure:
    main = main_design(runs, block)
    if main.empty:
        raise NothingToDrawError(f"no {block} runs with standard training")
    dataset, note = _main_dataset(main)
    data = main[main["dataset"] == dataset]
    palette = width_palette(runs["width"])
    reference = select(main_design(runs, reference_block), dataset=dataset)
    with style():
        fig = figure(4.2 * (len(indices) + 1), 4.6)
        axes = np.atleast_1d(fig.subplots(1, len(indices) + 1))
        for ax, index, letter in zip(axes, indices, "abc", strict=False):
            fig.data[f"{letter} {index}"] = coupling_panel(
                ax, data, index, palette, legend=letter == "a"
            )
            ax.set_title(f"{letter}  {INDEX_LABELS[index]}", loc="left")
        letter = "abcd"[len(indices)]
        fig.data[f"{letter} error"] = coupling_panel(
            axes[-1], data, "error", palette, reference=reference
        )
        axes[-1].set_title(f"{letter}  error (dashed: {reference_block})", loc="left")
        fig.suptitle(f"{title}, {dataset_label(dataset)}")
        notes(fig, [note, coverage(main)])
    return fig


def fig4(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """Fig 4: ICR indices (CI, DI) and error against coupling per width."""
    return _block_figure(
        runs, "ICR", ("ci", "di"), "Fig 4  improperly convergent ResNets", "ordinary"
    )


def figs2(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """S2 Fig: PCR indices and error against coupling per width, beside the ICRs' error."""
    # The paper compares PCRs with ICRs here: "PCRs tend to perform a bit worse than the
    # improperly convergent ResNets".
    return _block_figure(runs, "PCR", INDEX_NAMES, "S2 Fig  properly convergent ResNets", "ICR")


def figs1(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """S1 Fig: Recurrence Index against coupling, (a) ordinary and (b) ICR."""
    blocks = [b for b in ("ordinary", "ICR") if not main_design(runs, b).empty]
    if not blocks:
        raise NothingToDrawError("no ordinary or ICR runs with standard training")
    palette = width_palette(runs["width"])
    lines = []
    with style():
        fig = figure(9, 4.6)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, block, letter in zip(axes, ("ordinary", "ICR"), "ab", strict=True):
            main = main_design(runs, block)
            if main.empty:
                panel_note(ax, f"missing: {block} runs")
                ax.set_title(f"{letter}  {block}", loc="left")
                continue
            dataset, note = _main_dataset(main)
            part = main[main["dataset"] == dataset]
            fig.data[f"{letter} ri"] = coupling_panel(ax, part, "ri", palette, legend=letter == "a")
            ax.axhline(1.0, ls=":", color="k", lw=1, label="_paper: near 1")
            ax.set_title(f"{letter}  {block}, {dataset_label(dataset)}", loc="left")
            lines += [note, coverage(main)]
        axes[1].set_ylabel("")  # shared with panel a
        fig.suptitle("S1 Fig  Recurrence Index (dotted: 1, the paper's value)")
        notes(fig, sorted(set(n for n in lines if n)))
    return fig


# ---------------------------------------------------------------- S3: other tasks and sizes


def figs3(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """S3 Fig: error against coupling on Digitclutter variants and sizes and further datasets."""
    ordinary = select(runs, block="ordinary", variation=STANDARD)
    panels: list[tuple[str, str, pd.DataFrame]] = []  # (key, title, runs)
    missing = []
    for dataset in DIGITCLUTTER:
        data = ordinary[ordinary["dataset"] == dataset]
        if data.empty:
            missing.append(dataset_label(dataset))
        for size in sorted(ordered_train_sizes(data["train_size"]), key=lambda s: s != FULL):
            label = "" if size == FULL else f", {size} training images"
            part = data[data["train_size"] == size]
            panels.append((f"a {dataset} {size}", f"a  {dataset_label(dataset)}{label}", part))
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
            title = f"{letter}  {dataset_label(dataset)}{label}"
            panels.append((f"{letter} {dataset} {size}", title, part))
    if not panels:
        raise NothingToDrawError("no ordinary runs on any dataset")
    palette = width_palette(runs["width"])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    with style():
        fig = figure(4.2 * columns, 4.0 * rows + 0.6)
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
        for i, (ax, (key, title, data)) in enumerate(zip(axes, panels, strict=False)):
            fig.data[key] = coupling_panel(ax, data, "error", palette, legend=i == 0)
            ax.set_title(title, loc="left", fontsize=9)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle("S3 Fig  error of gradient-coupled ResNets on further tasks")
        notes(fig, ["missing: " + ", ".join(missing) if missing else ""])
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


def figs4(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """S4 Fig: error against coupling for BN gamma 0.1, triangular kernel, first five uncoupled."""
    varied, standard, note, names, missing = _variations(runs)
    palette = width_palette(runs["width"])
    with style():
        fig = figure(4.2 * len(names), 4.6)
        axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
        for ax, name, letter in zip(axes, names, "abcdefgh", strict=False):
            data = varied[varied["variation"] == name]
            fig.data[f"{letter} {name}"] = coupling_panel(
                ax, data, "error", palette, reference=standard, legend=letter == "a"
            )
            ax.set_title(f"{letter}  {name}", loc="left")
        fig.suptitle(
            f"S4 Fig  training variations, {dataset_label(varied['dataset'].iloc[0])} "
            "(dashed: standard training)"
        )
        notes(fig, [note, missing])
    return fig


def figs5(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """S5 Fig: CI, RI and DI against coupling for each training variation."""
    varied, standard, note, names, missing = _variations(runs)
    palette = width_palette(runs["width"])
    with style():
        fig = figure(12, 3.8 * len(names) + 0.6)
        axes = fig.subplots(len(names), 3, squeeze=False)
        for row, name in enumerate(names):
            data = varied[varied["variation"] == name]
            for ax, index in zip(axes[row], INDEX_NAMES, strict=True):
                first = row == 0 and index == "ci"
                fig.data[f"{name} {index}"] = coupling_panel(
                    ax, data, index, palette, reference=standard, legend=first
                )
                ax.set_title(f"{name}: {INDEX_LABELS[index]}", loc="left", fontsize=9)
        fig.suptitle(
            f"S5 Fig  indices under training variations, "
            f"{dataset_label(varied['dataset'].iloc[0])} (dashed: standard training)"
        )
        notes(fig, [note, missing])
    return fig


# ---------------------------------------------------------------- beyond the paper: Pathfinder

PATHFINDER_PANELS = ("error", "ci", "di")  # against coupling, per difficulty (Fig 3a, b)
PATHFINDER_CONVERGENT_PANELS = ("error", "di")  # per convergent block (Fig 4, S2 Fig)


def pathfinder(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> PaperFigure:
    """Fig 3's panels per Pathfinder difficulty; ICR and PCR where they ran (ordinary dashed)."""
    runs = select(runs, dataset=PATHFINDER)
    ordinary = main_design(runs)
    convergent = {
        block: main_design(runs, block) for block in (BLOCK_LABELS[b] for b in CONVERGENT_BLOCKS)
    }
    difficulties = [d for d in PATHFINDER if d in set(ordinary["dataset"])]
    with_convergent = [
        d for d in PATHFINDER if any(d in set(c["dataset"]) for c in convergent.values())
    ]
    if not difficulties and not with_convergent:
        raise NothingToDrawError("no Pathfinder runs with standard training (grid pathfinder)")
    palette = width_palette(runs["width"])
    rows = len(difficulties) + len(with_convergent)
    with style():
        fig = figure(17, 3.9 * rows + 0.9)
        axes = fig.subplots(rows, 4, squeeze=False)
        letters = iter("abcdefghij")
        for row, dataset in enumerate(difficulties):
            letter, label = next(letters), dataset_label(dataset)
            data = ordinary[ordinary["dataset"] == dataset]
            for ax, column in zip(axes[row], PATHFINDER_PANELS, strict=False):
                first = row == 0 and column == "error"
                fig.data[f"{dataset} {column}"] = coupling_panel(
                    ax, data, column, palette, legend=first
                )
                name = INDEX_LABELS.get(column, "error")
                ax.set_title(f"{letter}  {label}: {name}", loc="left", fontsize=9)
            _chance(axes[row][0], dataset)
            fig.data[f"{dataset} error against ci"] = _error_against_index(
                axes[row][3], data, "ci", palette
            )
            axes[row][3].set_title(f"{letter}  {label}: error against CI", loc="left", fontsize=9)
        for row, dataset in enumerate(with_convergent, start=len(difficulties)):
            letter, label = next(letters), dataset_label(dataset)
            reference = ordinary[ordinary["dataset"] == dataset]
            panels = [(b, c) for b in convergent for c in PATHFINDER_CONVERGENT_PANELS]
            for ax, (block, column) in zip(axes[row], panels, strict=True):
                name = INDEX_LABELS.get(column, "error")
                ax.set_title(f"{letter}  {label}, {block}: {name}", loc="left", fontsize=9)
                data = convergent[block][convergent[block]["dataset"] == dataset]
                if data.empty:
                    panel_note(ax, f"missing: {block} runs on {label}")
                    continue
                fig.data[f"{dataset} {block} {column}"] = coupling_panel(
                    ax, data, column, palette, reference=reference
                )
                if column == "error":
                    _chance(ax, dataset)
        absent = [dataset_label(d) for d in PATHFINDER if d not in difficulties]
        fig.suptitle(
            "Beyond the paper: Fig 3's panels on Pathfinder "
            "(dotted: chance; dashed: the ordinary ResNet)"
        )
        notes(
            fig,
            [
                f"missing: ordinary ResNets on {', '.join(absent)}" if absent else "",
                "" if with_convergent else "missing: ICR and PCR runs (the grid: Pathfinder-9)",
                coverage(ordinary) if difficulties else "",
            ],
        )
    return fig


def _chance(ax: Axes, dataset: str) -> None:
    """Draw the task's chance error as a dotted line across an error panel."""
    ax.axhline(task_for(dataset).chance_error, ls=":", color="k", lw=1, label="_chance")


FIGURES: dict[str, Callable[..., PaperFigure]] = {
    "fig2": fig2,
    "fig3": fig3,
    "fig4": fig4,
    "s1": figs1,
    "s2": figs2,
    "s3": figs3,
    "s4": figs4,
    "s5": figs5,
}
BEYOND_THE_PAPER: dict[str, Callable[..., PaperFigure]] = {"pathfinder": pathfinder}
ALL_FIGURES = ("fig1", *FIGURES, *BEYOND_THE_PAPER)


def draw_all(
    runs: pd.DataFrame | None,
    curves: pd.DataFrame | None,
    out: str | Path,
    only: Sequence[str] | None = None,
    report: Callable[[str], None] = print,
    toy_config: toy.ToyConfig | None = None,
) -> dict[str, Figure]:
    """Draw the chosen figures into `out` as PNG and PDF; return {name: Figure} of those drawn."""
    names = list(only or ALL_FIGURES)
    unknown = [n for n in names if n not in ALL_FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}: allowed are {list(ALL_FIGURES)}")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    drawn = {}
    # The paper's figures are about its datasets; Pathfinder's runs have their own figure.
    paper_runs = None if runs is None else select(runs, dataset=PAPER_DATASETS)
    for name in names:
        try:
            if name == "fig1":
                fig = fig1(toy_config)
            elif runs is None or runs.empty:
                raise NothingToDrawError("no runs in the results")
            elif name in BEYOND_THE_PAPER:
                fig = BEYOND_THE_PAPER[name](runs, curves)
            elif paper_runs is None or paper_runs.empty:
                raise NothingToDrawError("no runs on the paper's datasets")
            else:
                fig = FIGURES[name](paper_runs, curves)
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
