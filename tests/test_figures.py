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
from helpers import REPO, cifar_tiny_config, create_experiments, log_trial, write_cifar
from matplotlib.figure import Figure

from analysis import panels
from analysis import paper_figures as pf
from analysis.conditions import with_conditions
from analysis.report import load_results, summary_markdown, write_summary
from analysis.runs_to_tables import aggregate_to
from analysis.toy import ToyConfig

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
        log_trial(uri, GRID, cifar_tiny_config(data_root, **updates), f"trial-{i}", "finished")
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


def main_design(runs: pd.DataFrame, block: str = "ordinary") -> pd.DataFrame:
    """The runs of one block with standard training on the full training set."""
    keep = (runs["block"] == block) & (runs["variation"] == "standard")
    return runs[keep & (runs["train_size"] == "full")]


def drawn(frame: pd.DataFrame, series: str = "runs") -> dict[str, float]:
    """Return {run_id: value} of one series of a coupling panel's tidy rows."""
    rows = frame[frame["series"] == series]
    assert rows["run_id"].is_unique
    return dict(zip(rows["run_id"], rows["value"], strict=True))


def expected(runs: pd.DataFrame, column: str) -> dict[str, float]:
    """Return {run_id: value} of the runs where `column` is not NaN: what a panel must draw."""
    rows = runs.dropna(subset=[column])
    return dict(zip(rows["run_id"], rows[column].astype(float), strict=True))


def test_conditions_are_derived_from_the_flat_config(tables) -> None:
    runs, _ = tables
    assert len(runs) == len(TRIALS)
    assert set(runs["variant"]) == {"non-rec.", "rec. 0", "rec. 1"}
    assert set(runs["block"]) == {"ordinary", "ICR"}
    assert sorted(runs["variation"].unique()) == ["BN γ 0.1", "standard"]
    assert sorted(runs["train_size"].unique()) == ["100", "full"]


def test_coupling_panel_draws_its_rows_as_dots_and_mean_sd_per_width(tables) -> None:
    runs, _ = tables
    data = main_design(runs)
    palette = pf.width_palette(data["width"])
    with panels.style():
        ax = panels.figure(4, 4).subplots()
        rows = panels.coupling_panel(ax, data, "error", palette)
    assert drawn(rows) == expected(data, "error")
    assert set(rows["series"]) == {"runs"}
    variants = ["non-rec.", "rec. 0", "rec. 1"]
    # The artists hold these rows: one dot per run, and per width a line through the means.
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    assert sorted(dots) == pytest.approx(sorted(rows["value"]))
    means = [ln for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 3]
    assert len(means) == data["width"].nunique()
    for line, (width, part) in zip(means, rows.groupby("width"), strict=True):
        per_variant = part.groupby("variant")["value"].mean().reindex(variants)
        assert line.get_ydata() == pytest.approx(per_variant.to_numpy(), nan_ok=True), width
        assert line.get_color() == palette[width]
    sds = rows.groupby(["width", "variant"])["value"].std().dropna()
    assert len(sds) == 1  # width 4, non-rec.: seeds 0 and 1
    bars = [ln for ln in ax.lines if np.isnan(ln.get_xdata()).any()]  # seaborn's error bars
    tops = {round(y, 9) for ln in bars for y in ln.get_ydata() if not np.isnan(y)}
    width_4 = rows[(rows["width"] == 4) & (rows["variant"] == "non-rec.")]["value"]
    assert round(width_4.mean() + width_4.std(), 9) in tops
    assert [t.get_text() for t in ax.get_xticklabels()] == variants


def test_fig2_draws_curves_indices_and_error_of_the_non_recurrent_resnet(tables) -> None:
    runs, curves = tables
    fig = pf.fig2(runs, curves)
    chosen = main_design(runs)
    chosen = chosen[(chosen["variant"] == "non-rec.") & (chosen["width"] == 4)]
    assert len(chosen) == 2  # seeds 0 and 1 of width 4: the most frequent width
    first = chosen.sort_values("seed")["run_id"].iloc[0]
    for curve in ("readout", "dropout", "extra"):
        for stage in (1, 2, 3):
            part = fig.data[f"a {curve} stage{stage}"]
            mine = curves[
                curves["run_id"].isin(chosen["run_id"])
                & (curves["curve"] == curve)
                & (curves["stage"] == stage)
            ]
            assert sorted(part["error"]) == pytest.approx(sorted(mine["error"]))
            assert set(part.loc[part["emphasised"], "run_id"]) == {first}
    for index in ("ci", "ri", "di"):
        points = fig.data[f"b {index}"]
        columns = [f"{index}_stage{s}" for s in (1, 2, 3)] + [index]
        values = chosen[columns].to_numpy().ravel()
        assert sorted(points["value"]) == pytest.approx(sorted(values[~np.isnan(values)]))
    for index in ("ci", "di"):
        scatter = fig.data[f"c {index}"]
        want = chosen.dropna(subset=[index])
        assert dict(zip(scatter["run_id"], scatter["error"], strict=True)) == dict(
            zip(want["run_id"], want["error"], strict=True)
        )
    note = texts(fig)
    assert "width 16 absent: drawn with 4" in note
    assert "missing: instances (2 of the paper's 6)" in note


def test_fig3_panels_draw_the_runs_of_their_conditions(tables) -> None:
    runs, _ = tables
    fig = pf.fig3(runs)
    main = main_design(runs)
    assert sorted(fig.data) == ["a ci", "a di", "b error cifar10", "c ci", "c di"]
    for index in ("ci", "di"):
        assert drawn(fig.data[f"a {index}"]) == expected(main, index)
        means = main.dropna(subset=[index]).groupby(["width", "variant"])[[index, "error"]].mean()
        got = fig.data[f"c {index}"].set_index(["width", "variant"])
        pd.testing.assert_frame_equal(got.sort_index(), means.sort_index())
    error = fig.data["b error cifar10"]
    assert drawn(error) == expected(main, "error")
    counts = error.groupby(["width", "variant"]).size().to_dict()
    assert counts == {
        (4, "non-rec."): 2,
        (4, "rec. 0"): 1,
        (4, "rec. 1"): 1,
        (8, "non-rec."): 1,
        (8, "rec. 1"): 1,
    }
    note = texts(fig)
    assert "missing: Digitclutter-5 (no second dataset)" in note
    assert "missing: width 16, 32, 64; rec. 0.5, rec. 0.9" in note


def test_fig4_draws_icr_with_the_ordinary_resnet_as_reference(tables) -> None:
    runs, _ = tables
    fig = pf.fig4(runs)
    icr = main_design(runs, "ICR")
    assert sorted(fig.data) == ["a ci", "b di", "c error"]
    assert drawn(fig.data["a ci"]) == expected(icr, "ci")
    assert drawn(fig.data["b di"]) == expected(icr, "di")
    error = fig.data["c error"]
    assert drawn(error) == expected(icr, "error")
    ordinary = main_design(runs)
    # the dashed reference: ordinary ResNets at the widths and variants of the ICRs only
    ordinary = ordinary[(ordinary["width"] == 4) & ordinary["variant"].isin(icr["variant"])]
    assert drawn(error, "reference") == expected(ordinary, "error")
    ax = fig.axes[2]
    assert {ln.get_linestyle() for ln in ax.lines if "_reference" in ln.get_label()} == {"--"}


def test_supplementary_figures_draw_what_exists(tables) -> None:
    runs, _curves = tables
    s1 = pf.figs1(runs)
    assert drawn(s1.data["a ri"]) == expected(main_design(runs), "ri")
    assert drawn(s1.data["b ri"]) == expected(main_design(runs, "ICR"), "ri")
    s3 = pf.figs3(runs)
    few = runs[runs["train_size"] == "100"]
    assert list(s3.data) == ["c cifar10 100"]
    assert drawn(s3.data["c cifar10 100"]) == expected(few, "error")
    assert "Digitclutter-3, Digitclutter-4, Digitclutter-5" in texts(s3)
    assert "CIFAR-100" in texts(s3) and "MNIST" in texts(s3)
    s4 = pf.figs4(runs)
    varied = runs[runs["variation"] == "BN γ 0.1"]
    standard = runs[(runs["variation"] == "standard") & (runs["train_size"] == "full")]
    standard = standard[(standard["block"] == "ordinary") & (standard["width"] == 4)]
    standard = standard[standard["variant"].isin(varied["variant"])]  # variants of the panel
    assert list(s4.data) == ["a BN γ 0.1"]
    assert drawn(s4.data["a BN γ 0.1"]) == expected(varied, "error")
    assert drawn(s4.data["a BN γ 0.1"], "reference") == expected(standard, "error")
    assert "missing: triangular kernel, first 5 uncoupled" in texts(s4)
    s5 = pf.figs5(runs)
    assert list(s5.data) == ["BN γ 0.1 ci", "BN γ 0.1 ri", "BN γ 0.1 di"]
    for index in ("ci", "ri", "di"):
        assert drawn(s5.data[f"BN γ 0.1 {index}"]) == expected(varied, index)


def test_runs_without_indices_are_counted_not_drawn(tables) -> None:
    runs, _ = tables
    at_chance = runs.copy()
    varied = at_chance["variation"] != "standard"
    at_chance.loc[varied, ["ci", "ri", "di"]] = np.nan  # as for a network left at chance
    fig = pf.figs5(at_chance)
    for key, ax in zip(fig.data, fig.axes, strict=True):
        assert drawn(fig.data[key]) == {}
        assert drawn(fig.data[key], "reference")  # the standard training is still drawn
        assert "1 run(s) at chance: no index" in [t.get_text() for t in ax.texts]


def test_figures_without_their_runs_are_skipped_with_a_message(tables, tmp_path: Path) -> None:
    runs, curves = tables
    with pytest.raises(pf.NothingToDrawError, match="PCR"):
        pf.figs2(runs)
    messages = []
    made = pf.draw_all(runs, curves, tmp_path, ["s2", "fig4"], report=messages.append)
    assert list(made) == ["fig4"]
    assert messages[0].startswith("skipped s2: no PCR runs")
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig4.pdf").exists()
    assert not (tmp_path / "s2.png").exists()
    with pytest.raises(ValueError, match="unknown figure"):
        pf.draw_all(runs, curves, tmp_path, ["fig9"])


def test_absent_paper_dataset_falls_back_to_the_datasets_present(tables) -> None:
    runs, curves = tables
    clutter = runs.assign(dataset="digitclutter-3")  # the same runs, as if on Digitclutter-3
    fig = pf.fig3(clutter)
    assert "dataset CIFAR-10 absent: drawn with Digitclutter-3" in texts(fig)
    assert drawn(fig.data["a ci"]) == expected(main_design(clutter), "ci")
    assert "b error digitclutter-3" in fig.data
    fig2 = pf.fig2(clutter, curves)
    assert "Fig 2  ordinary ResNet, non-recurrent, Digitclutter-3, width 4" in texts(fig2)


def test_a_torchvision_run_counts_in_no_paper_figure(results: Path, tables) -> None:
    runs, curves = tables
    raw = pd.read_parquet(results / "runs.parquet")
    # Each run again as a torchvision ResNet-18, of width 16 (unused): Fig 2's preferred width.
    tv = raw.assign(run_id=raw["run_id"] + "-tv", **{"model.arch": "torchvision-resnet18"})
    tv["model.width"] = 16
    older = raw.drop(columns="model.arch")  # runs logged before model.arch: the preact ResNet
    mixed = with_conditions(pd.concat([older, tv], ignore_index=True))
    assert set(mixed["arch"]) == {"preact", "torchvision-resnet18"}
    assert set(mixed.loc[mixed["arch"] != "preact", "block"]) == {"torchvision-resnet18"}
    both = pd.concat([curves, curves.assign(run_id=curves["run_id"] + "-tv")])
    for name in ("fig2", "fig3", "fig4", "s3"):
        alone, with_tv = pf.FIGURES[name](runs, curves), pf.FIGURES[name](mixed, both)
        assert alone.data.keys() == with_tv.data.keys(), name
        for key, frame in alone.data.items():
            pd.testing.assert_frame_equal(frame, with_tv.data[key], obj=f"{name} {key}")


def test_fig1_draws_the_toy_trajectories() -> None:
    config = ToyConfig(steps=150)
    fig = pf.fig1(config)
    normal, dropped, extra = (fig.data[letter] for letter in "bcd")
    assert set(normal["method"]) == {"error-corrective", "feedforward", "resnet", "recurrent"}
    points = extra.groupby("method").size()
    assert points["resnet"] == config.blocks + config.extra_evaluations + 1
    assert dropped.groupby("method").size()["resnet"] == config.blocks
    # what the panels drew: the ResNet line of panel d holds the rows of its table
    line = next(ln for ln in fig.axes[2].lines if ln.get_label() == "ResNet")
    resnet = extra[extra["method"] == "resnet"]
    assert line.get_xydata() == pytest.approx(resnet[["z1", "z2"]].to_numpy())
    true_z = next(ln for ln in fig.axes[0].lines if ln.get_label() == "true z")
    assert np.allclose(true_z.get_xydata(), [config.example])


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
    names = sorted(p.name for p in out.iterdir())
    assert names == ["claims.csv", "fig3.pdf", "fig3.png", "summary.md"]
    assert "skipped s2: no PCR runs" in done.stdout
    bad = subprocess.run(
        [*command, "--only", "fig9"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "fig9" in bad.stderr


# (recurrent_init, lam) of the five variants, in the paper's order
VARIANTS = ((False, 0.0), (True, 0.0), (True, 0.5), (True, 0.9), (True, 1.0))


def pathfinder_runs() -> pd.DataFrame:
    """Synthetic runs: ordinary ResNets on Pathfinder-6 and -9, ICRs on -9, one CIFAR-10 run."""
    rows = []

    def add(dataset: str, width: int, variant: int, seed: int, block: str = "ordinary") -> None:
        recurrent, lam = VARIANTS[variant]
        rows.append(
            {
                "run_id": f"{dataset}-{block}-{width}-{variant}-{seed}",
                "data.dataset": dataset,
                "model.width": width,
                "model.block": block,
                "model.recurrent_init": recurrent,
                "coupling.lam": lam,
                "run.seed": seed,
                "final_test_error": 0.45 - 0.02 * variant + 0.01 * seed,
                "ci": 0.5 + 0.05 * variant,
                "ri": 0.9,
                "di": 0.4 - 0.05 * variant,
            }
        )

    for dataset in ("pathfinder-6", "pathfinder-9"):
        for width in (8, 16):
            for variant in range(5):
                for seed in (0, 1):
                    add(dataset, width, variant, seed)
    for variant in (0, 4):
        add("pathfinder-9", 8, variant, 0, block="icr")
    add("cifar10", 8, 0, 0)
    return with_conditions(pd.DataFrame(rows))


def test_pathfinder_figure_draws_fig3s_panels_per_difficulty() -> None:
    runs = pathfinder_runs()
    fig = pf.pathfinder(runs)
    per_difficulty = [
        f"{d} {panel}"
        for d in ("pathfinder-6", "pathfinder-9")
        for panel in ("error", "ci", "di", "error against ci")
    ]
    assert list(fig.data) == [*per_difficulty, "pathfinder-9 ICR error", "pathfinder-9 ICR di"]
    ordinary = main_design(runs)
    for dataset in ("pathfinder-6", "pathfinder-9"):
        mine = ordinary[ordinary["dataset"] == dataset]
        for column in ("error", "ci", "di"):
            assert drawn(fig.data[f"{dataset} {column}"]) == expected(mine, column)
        means = mine.groupby(["width", "variant"])[["ci", "error"]].mean()
        got = fig.data[f"{dataset} error against ci"].set_index(["width", "variant"])
        pd.testing.assert_frame_equal(got.sort_index(), means.sort_index())
    icr = fig.data["pathfinder-9 ICR error"]
    assert drawn(icr) == expected(main_design(runs, "ICR"), "error")
    # the dashed reference: the ordinary ResNets of Pathfinder-9 at the ICRs' width and variants
    reference = ordinary[(ordinary["dataset"] == "pathfinder-9") & (ordinary["width"] == 8)]
    reference = reference[reference["variant"].isin(["non-rec.", "rec. 1"])]
    assert drawn(icr, "reference") == expected(reference, "error")
    note = texts(fig)
    assert "missing: ordinary ResNets on Pathfinder-14" in note
    assert "missing: PCR runs on Pathfinder-9" in note
    assert "missing: width 32, 64" in note
    assert "cifar10-ordinary-8-0-0" not in set(pd.concat(fig.data.values())["run_id"])
    chance = {
        tuple(line.get_ydata()) for line in fig.axes[0].lines if line.get_label() == "_chance"
    }
    assert chance == {(0.5, 0.5)}


def test_paper_figures_ignore_pathfinder_runs(tmp_path: Path) -> None:
    runs = pathfinder_runs()
    messages: list[str] = []
    made = pf.draw_all(runs, None, tmp_path, ["fig3", "pathfinder"], report=messages.append)
    assert list(made) == ["fig3", "pathfinder"]
    assert set(made["fig3"].data["b error cifar10"]["run_id"]) == {"cifar10-ordinary-8-0-0"}
    assert (tmp_path / "pathfinder.png").stat().st_size > 0
    only_pathfinder = runs[runs["dataset"] != "cifar10"]
    made = pf.draw_all(only_pathfinder, None, tmp_path, ["fig3"], report=messages.append)
    assert not made and messages[-1] == "skipped fig3: no runs on the paper's datasets"
    with pytest.raises(pf.NothingToDrawError, match="no Pathfinder runs"):
        pf.pathfinder(runs[runs["dataset"] == "cifar10"])
