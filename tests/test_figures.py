"""analysis.paper_figures / analysis/figures.py, drawn from tables aggregated from a real store.

The store holds real tiny trials (pipeline.train) logged by pipeline.tracking: CIFAR-10 (tiny
files in the real format), ordinary ResNets of widths 4 and 8 across couplings, ICRs, a reduced
training set and one training variation. Everything else of the paper's design is absent, so
the figures must draw what exists and say what is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_cifar
from matplotlib.figure import Figure
from test_aggregate import create_experiments, log_trial, tiny_config

from analysis import paper_figures as pf
from analysis.collect import aggregate_to
from analysis.report import load_results, summary_markdown, write_summary
from analysis.toy import ToyConfig

REPO = Path(__file__).resolve().parent.parent
GRID = "figures"
# (width, recurrent_init, lam, seed, extra updates): the conditions of the test store
TRIALS = [
    (4, False, 0.0, 0, {}),
    (4, False, 0.0, 1, {}),
    (4, True, 0.0, 0, {}),
    (4, True, 1.0, 0, {}),
    (8, False, 0.0, 0, {}),
    (8, True, 1.0, 0, {}),
    (4, False, 0.0, 0, {"model.block": "icr"}),
    (4, True, 1.0, 0, {"model.block": "icr"}),
    (4, False, 0.0, 0, {"model.bn_gamma_init": 0.1}),
    (4, False, 0.0, 0, {"data.train_size": 100}),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory aggregated from a real MLflow store of real tiny trials."""
    root = tmp_path_factory.mktemp("figure-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data_root = write_cifar(root / "data", "cifar10", n_train=200, n_test=100)
    create_experiments(uri, [GRID], root / "artifacts")
    for i, (width, recurrent, lam, seed, extra) in enumerate(TRIALS):
        updates = {
            "model.width": width,
            "model.recurrent_init": recurrent,
            "coupling.lam": lam,
            "run.seed": seed,
            **extra,
        }
        log_trial(uri, GRID, tiny_config(data_root, **updates), f"trial-{i}", "finished")
    out = root / "results"
    aggregate_to(uri, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tables(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with condition columns, curves) as the figures read them."""
    return load_results(results)


def texts(fig: Figure) -> str:
    """Return every text of a figure: suptitle, notes, axes titles and in-panel notes."""
    parts = [t.get_text() for t in fig.texts]
    for sub in fig.subfigs:
        parts += [t.get_text() for t in sub.texts]
        parts += [sub.get_suptitle()] if hasattr(sub, "get_suptitle") else []
    parts.append(fig.get_suptitle())
    for ax in fig.axes:
        parts += [ax.get_title(loc="left"), ax.get_title()]
        parts += [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def width_lines(ax) -> dict[str, int]:
    """Return {"width W": number of points} of the mean lines of a coupling panel."""
    return {
        line.get_label(): len(line.get_xdata())
        for line in ax.lines
        if line.get_label().startswith("width")
    }


def test_conditions_are_derived_from_the_flat_config(tables) -> None:
    runs, _ = tables
    assert len(runs) == len(TRIALS)
    assert set(runs["variant"]) == {"non-rec.", "rec. 0", "rec. 1"}
    assert set(runs["block"]) == {"ordinary", "ICR"}
    assert sorted(runs["variation"].unique()) == ["BN γ 0.1", "standard"]
    assert sorted(runs["train_size"].unique()) == ["100", "full"]


def test_fig2_draws_curves_indices_and_error_of_the_non_recurrent_resnet(tables) -> None:
    runs, curves = tables
    fig = pf.fig2(runs, curves)
    assert len(fig.axes) == 9 + 3 + 2
    chosen = runs[
        (runs["variant"] == "non-rec.")
        & (runs["block"] == "ordinary")
        & (runs["variation"] == "standard")
        & (runs["train_size"] == "full")
        & (runs["width"] == 4)
    ]
    assert len(chosen) == 2  # seeds 0 and 1 of width 4: the most frequent width
    curve_axes = fig.axes[:9]
    for ax in curve_axes:
        data_lines = [line for line in ax.lines if line.get_label() != "_chance"]
        assert len(data_lines) == len(chosen)  # one line per instance
        widths = sorted(line.get_linewidth() for line in data_lines)
        assert widths[-1] == 2 and widths[0] < 2  # one instance emphasised
        assert any(line.get_label() == "_chance" for line in ax.lines)
    assert curve_axes[0].get_title() == "early read-out, stage 1"
    assert curve_axes[8].get_xlabel() == "extra evaluations k"
    index_axes = fig.axes[9:12]
    assert [ax.get_title() for ax in index_axes] == [
        "Convergence Index",
        "Recurrence Index",
        "Divergence Index",
    ]
    for ax, index in zip(index_axes, ("ci", "ri", "di"), strict=True):
        instances = [c for c in ax.collections if c.get_label() == "_instances"]
        indexed = int(chosen[index].notna().sum())
        assert sum(len(c.get_offsets()) for c in instances) == 4 * indexed  # 3 stages + mean
    assert fig.axes[12].get_xlabel() == "Convergence Index"
    assert fig.axes[12].get_ylabel() == "test error"
    note = texts(fig)
    assert "CIFAR-10, width 4" in note
    assert "width 16 absent: drawn with 4" in note
    assert "missing: instances (2 of the paper's 6)" in note


def test_fig3_panels_have_a_line_per_width_and_name_what_is_missing(tables) -> None:
    runs, _ = tables
    fig = pf.fig3(runs)
    assert len(fig.axes) == 6
    ci, di, error_cifar, error_second, error_ci, error_di = fig.axes
    ordinary = runs[(runs["block"] == "ordinary") & (runs["variation"] == "standard")]
    ordinary = ordinary[ordinary["train_size"] == "full"]
    expected = {f"width {w}": part["variant"].nunique() for w, part in ordinary.groupby("width")}
    assert width_lines(error_cifar) == expected  # {"width 4": 3, "width 8": 2}
    assert [t.get_text() for t in ci.get_xticklabels()] == ["non-rec.", "rec. 0", "rec. 1"]
    assert ci.get_ylabel() == "Convergence Index" and di.get_ylabel() == "Divergence Index"
    assert error_cifar.get_ylabel() == "test error"
    assert width_lines(error_second) == {}
    assert "missing: Digitclutter-5" in "\n".join(t.get_text() for t in error_second.texts)
    for ax in (error_ci, error_di):  # a line per width joins its variants (equal parameters)
        lines = {ln.get_label(): ln for ln in ax.lines if ln.get_label().startswith("width")}
        assert set(lines) <= set(expected)
        assert ax.get_ylabel() == "test error"
    note = texts(fig)
    assert "missing: width 16, 32, 64; rec. 0.5, rec. 0.9" in note


def test_fig4_draws_icr_with_the_ordinary_resnet_as_reference(tables) -> None:
    runs, _ = tables
    fig = pf.fig4(runs)
    assert len(fig.axes) == 3
    ci, di, error = fig.axes
    icr = runs[runs["block"] == "ICR"]
    for ax, index in ((ci, "ci"), (di, "di")):
        points = width_lines(ax).get("width 4", 0)
        assert points == icr.dropna(subset=[index])["variant"].nunique()
    assert width_lines(error) == {"width 4": 2}
    references = [ln for ln in error.lines if ln.get_label().startswith("_reference")]
    assert {ln.get_label() for ln in references} == {"_reference width 4"}  # widths of ICRs
    assert all(ln.get_linestyle() == "--" for ln in references)
    assert "improperly convergent" in fig.get_suptitle()


def test_supplementary_figures_draw_what_exists(tables) -> None:
    runs, _curves = tables
    s1 = pf.figs1(runs)
    assert [ax.get_ylabel() for ax in s1.axes] == ["Recurrence Index", ""]
    assert width_lines(s1.axes[0]) and width_lines(s1.axes[1])
    s3 = pf.figs3(runs)
    titles = [ax.get_title(loc="left") for ax in s3.axes if ax.get_visible()]
    assert titles == ["c  CIFAR-10, 100 training images"]
    assert "Digitclutter-3, Digitclutter-4, Digitclutter-5" in texts(s3)
    assert "CIFAR-100" in texts(s3) and "MNIST" in texts(s3)
    s4 = pf.figs4(runs)
    assert [ax.get_title(loc="left") for ax in s4.axes] == ["a  BN γ 0.1"]
    assert width_lines(s4.axes[0]) == {"width 4": 1}
    assert "missing: triangular kernel, first 5 uncoupled" in texts(s4)
    s5 = pf.figs5(runs)
    assert len(s5.axes) == 3
    assert [ax.get_ylabel() for ax in s5.axes] == [
        "Convergence Index",
        "Recurrence Index",
        "Divergence Index",
    ]


def test_runs_without_indices_are_counted_not_drawn(tables) -> None:
    runs, _ = tables
    at_chance = runs.copy()
    varied = at_chance["variation"] != "standard"
    at_chance.loc[varied, ["ci", "ri", "di"]] = np.nan  # as for a network left at chance
    fig = pf.figs5(at_chance)
    for ax in fig.axes:
        assert width_lines(ax) == {}
        assert "1 run(s) at chance: no index" in [t.get_text() for t in ax.texts]
        assert any(ln.get_label().startswith("_reference") for ln in ax.lines)


def test_figures_without_their_runs_are_skipped_with_a_message(tables, tmp_path: Path) -> None:
    runs, curves = tables
    with pytest.raises(pf.NothingToDrawError, match="PCR"):
        pf.figs2(runs)
    messages = []
    drawn = pf.draw_all(runs, curves, tmp_path, ["s2", "fig4"], report=messages.append)
    assert list(drawn) == ["fig4"]
    assert messages[0].startswith("skipped s2: no PCR runs")
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig4.pdf").exists()
    assert not (tmp_path / "s2.png").exists()
    with pytest.raises(ValueError, match="unknown figure"):
        pf.draw_all(runs, curves, tmp_path, ["fig9"])


def test_absent_paper_dataset_falls_back_to_the_datasets_present(tables) -> None:
    runs, curves = tables
    clutter = runs.assign(dataset="digitclutter-3")  # the same runs, as if on Digitclutter-3
    fig = pf.fig3(clutter)
    note = texts(fig)
    assert "dataset CIFAR-10 absent: drawn with Digitclutter-3" in note
    assert "a  Convergence Index, Digitclutter-3" in note
    fig2 = pf.fig2(clutter, curves)
    assert "Fig 2  ordinary ResNet, non-recurrent, Digitclutter-3, width 4" in texts(fig2)


def test_fig1_draws_the_toy_trajectories() -> None:
    config = ToyConfig(steps=150)
    fig = pf.fig1(config)
    assert len(fig.axes) == 3
    normal, dropped, extra = fig.axes
    labels = [ln.get_label() for ln in normal.lines]
    assert labels[:4] == [
        "error-corrective algorithm",
        "non-residual network",
        "ResNet",
        "recurrent ResNet",
    ]
    points = {ln.get_label(): len(ln.get_xdata()) for ln in extra.lines}
    assert points["ResNet"] == config.blocks + config.extra_evaluations + 1
    assert points["true z"] == 1
    assert {ln.get_label(): len(ln.get_xdata()) for ln in dropped.lines}["ResNet"] == config.blocks
    assert np.allclose(
        next(ln for ln in normal.lines if ln.get_label() == "true z").get_xydata(), [[1.0, 1.0]]
    )


def test_summary_sets_the_paper_values_beside_ours(tables, tmp_path: Path) -> None:
    runs, _ = tables
    text = summary_markdown(runs)
    assert "| CIFAR-10 error, ordinary ResNet, width 16, non-rec. | = 5.2% | no runs | 0 |" in text
    assert "| DI of ICRs, CIFAR-10, all couplings and widths | ≈ 0 |" in text
    # the paper's width 16 is absent: its RI claim is compared at the widths present, and says so
    ri_row = next(ln for ln in text.splitlines() if ln.startswith("| RI, ordinary ResNet"))
    assert "(on CIFAR-10, width 4, 8)" in ri_row
    conditions = runs.groupby(
        ["dataset", "block", "variation", "train_size", "width", "variant"]
    ).ngroups
    rows = [ln for ln in text.splitlines() if ln.startswith("| CIFAR-10 | ")]
    assert len(rows) == conditions
    assert "| CIFAR-10 | ordinary | standard | full | 4 | non-rec. | 2 |" in text
    path = write_summary(runs, tmp_path)
    assert path.read_text() == text == summary_markdown(runs)  # no timestamps: reruns identical


def test_script_draws_from_the_repo_root(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    command = [sys.executable, "analysis/figures.py", "--results", str(results)]
    done = subprocess.run(
        [*command, "--out", str(out), "--only", "fig3", "s2", "--report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fig3.pdf", "fig3.png", "summary.md"]
    assert "skipped s2: no PCR runs" in done.stdout
    bad = subprocess.run(
        [*command, "--only", "fig9"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "fig9" in bad.stderr
