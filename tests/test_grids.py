"""sweeps/grids.py and sweeps/resources.py: trial counts, uniqueness, coverage, costs (fast)."""

from __future__ import annotations

import pytest

from pipeline.config import TrialConfig
from sweeps.cli import build_parser, main
from sweeps.grids import (
    GRIDS,
    check_unique,
    convergent_trials,
    grid_trials,
    main_trials,
    sample_efficiency_trials,
    training_variation_trials,
    trial_configs,
)
from sweeps.resources import Resources, format_dry_run, gpu_hours, parse_gpu_share


def frozen(trial: dict) -> tuple:
    """Return a hashable form of a flat trial dict."""
    return tuple(sorted(trial.items()))


@pytest.fixture(scope="module")
def paper_configs() -> list[TrialConfig]:
    return trial_configs("paper_grid")


def test_paper_grid_has_915_distinct_trials(paper_configs: list[TrialConfig]) -> None:
    assert len(paper_configs) == 915  # 304 per seed x 3, and Fig 2's condition to six seeds
    assert len({frozen(c.to_flat_dict()) for c in paper_configs}) == 915
    fig2 = [
        c
        for c in paper_configs
        if (c.data.dataset, c.model.width, c.model.block, c.model.recurrent_init, c.coupling.lam)
        == ("cifar10", 16, "ordinary", False, 0.0)
        and c.data.train_size is None
        and c.model.bn_gamma_init == 1.0
    ]
    assert sorted(c.run.seed for c in fig2) == [0, 1, 2, 3, 4, 5]
    assert len(main_trials()) == 6 * 5 * 4 * 3
    assert len(convergent_trials()) == 2 * 5 * 4 * 3
    assert len(sample_efficiency_trials()) == (3 + 2) * 5 * 4 * 3
    assert len(training_variation_trials()) == (5 + 3 + 3) * 4 * 3


def test_paper_grid_design(paper_configs: list[TrialConfig]) -> None:
    main = [c for c in paper_configs if c.data.dataset == "mnist"]
    assert {(c.model.recurrent_init, c.coupling.lam) for c in main} == {
        (False, 0.0),
        (True, 0.0),
        (True, 0.5),
        (True, 0.9),
        (True, 1.0),
    }
    assert {c.model.width for c in paper_configs} == {8, 16, 32, 64}
    assert {c.run.seed for c in paper_configs} == {0, 1, 2, 3, 4, 5}  # 3..5: Fig 2 only
    convergent = [c for c in paper_configs if c.model.block != "ordinary"]
    assert {c.data.dataset for c in convergent} == {"cifar10"}
    assert {c.model.mu for c in convergent} == {0.95}
    triangular = [c for c in paper_configs if c.coupling.kernel == "triangular"]
    assert {c.coupling.lam for c in triangular} == {0.5, 0.9, 1.0}
    assert {c.data.train_size for c in paper_configs if c.data.dataset == "digitclutter-5"} == {
        None,
        10_000,
        30_000,
    }


@pytest.mark.parametrize("seeds", [1, 2, 5])
def test_seeds_scale_the_paper_grid(seeds: int) -> None:
    assert len(grid_trials("paper_grid", seeds)) == 304 * seeds + max(0, 6 - seeds)


# pathfinder goes beyond the paper: its own test below.
@pytest.mark.parametrize(
    "name", [n for n in GRIDS if n not in ("paper_grid", "smoke", "pathfinder")]
)
def test_figure_grids_are_distinct_subsets_of_the_paper_grid(name: str) -> None:
    paper = {frozen(t) for t in grid_trials("paper_grid")}
    trials = [frozen(t) for t in grid_trials(name)]
    assert trials
    assert len(set(trials)) == len(trials)
    assert set(trials) <= paper


@pytest.mark.parametrize("name", list(GRIDS))
def test_every_grid_is_documented_and_valid(name: str) -> None:
    doc = GRIDS[name].__doc__ or ""
    assert "launch.py" in doc or "ray submit" in doc, "docstring says how to run it"
    assert any(word in doc for word in ("trials", "GPU-hours", "minutes")), "and what it costs"
    configs = trial_configs(name, seeds=1, settings={"data.root": "/data"})
    assert all(c.data.root == "/data" for c in configs)


def test_smoke_gives_every_figure_and_claim_something_to_judge() -> None:
    configs = trial_configs("smoke")
    assert len(configs) == 19
    assert {c.data.dataset for c in configs} == {"digitclutter-3"}
    assert {c.model.width for c in configs} == {8}
    assert all(2 <= c.model.blocks_per_stage <= 4 for c in configs)
    assert all(c.optim.epochs <= 6 and c.data.clutter_train_images <= 5000 for c in configs)
    standard = [c for c in configs if c.model.bn_gamma_init == 1.0]
    cells: dict[tuple, set[int]] = {}
    for c in standard:
        cells.setdefault((c.model.block, c.model.recurrent_init, c.coupling.lam), set()).add(
            c.run.seed
        )
    variants = {(False, 0.0), (True, 0.0), (True, 0.5), (True, 0.9), (True, 1.0)}
    # every variant of the ordinary ResNet, ICR and PCR non-rec. and rec. 1: two seeds each
    assert set(cells) == {("ordinary", *v) for v in variants} | {
        (block, *v) for block in ("icr", "pcr") for v in ((False, 0.0), (True, 1.0))
    }
    assert all(seeds == {0, 1} for seeds in cells.values())
    varied = [c for c in configs if c.model.bn_gamma_init != 1.0]
    assert [(c.model.block, c.model.recurrent_init, c.run.seed) for c in varied] == [
        ("ordinary", False, 0)
    ]
    assert len(trial_configs("smoke", seeds=3)) == 28


def test_pathfinder_grid_is_fig3s_design_on_three_difficulties_beyond_the_paper() -> None:
    configs = trial_configs("pathfinder")
    assert len(configs) == 300 and len({frozen(c.to_flat_dict()) for c in configs}) == 300
    ordinary = [c for c in configs if c.model.block == "ordinary"]
    assert len(ordinary) == 3 * 5 * 4 * 3
    assert {c.data.dataset for c in ordinary} == {"pathfinder-6", "pathfinder-9", "pathfinder-14"}
    convergent = [c for c in configs if c.model.block != "ordinary"]
    assert len(convergent) == 2 * 5 * 4 * 3  # ICR and PCR at the middle difficulty only
    assert {(c.data.dataset, c.model.block, c.model.mu) for c in convergent} == {
        ("pathfinder-9", "icr", 0.95),
        ("pathfinder-9", "pcr", 0.95),
    }
    assert {(c.model.recurrent_init, c.coupling.lam) for c in configs} == {
        (False, 0.0),
        (True, 0.0),
        (True, 0.5),
        (True, 0.9),
        (True, 1.0),
    }
    assert {c.model.width for c in configs} == {8, 16, 32, 64}
    assert {c.run.seed for c in configs} == {0, 1, 2}
    assert {c.data.pathfinder_train_images for c in configs} == {100_000}
    # Not part of the paper's design.
    paper = {frozen(t) for t in grid_trials("paper_grid")}
    assert not paper & {frozen(t) for t in grid_trials("pathfinder")}
    assert len(grid_trials("pathfinder", seeds=1)) == 100


def test_pathfinder_cost_follows_its_configured_training_size() -> None:
    resources = Resources(use_gpus=True)
    full = TrialConfig.from_dict({"data.dataset": "pathfinder-14", "model.width": 8})
    fifth = full.with_updates({"data.pathfinder_train_images": 20_000})
    assert gpu_hours(fifth, resources) == pytest.approx(gpu_hours(full, resources) / 5)
    # The Digitclutter key does not price a Pathfinder trial.
    assert gpu_hours(full.with_updates({"data.clutter_train_images": 1_000}), resources) == (
        pytest.approx(gpu_hours(full, resources))
    )
    report = format_dry_run("pathfinder", trial_configs("pathfinder"), resources)
    assert "grid pathfinder: 300 trials" in report and "pathfinder-14" in report


def test_overrides_apply_to_every_trial_and_are_checked() -> None:
    configs = trial_configs("smoke", overrides=["optim.epochs=1", "optim.lr=0.05"])
    assert {(c.optim.epochs, c.optim.lr) for c in configs} == {(1, 0.05)}
    with pytest.raises(ValueError, match=r"model\.widht"):
        trial_configs("smoke", overrides=["model.widht=8"])
    with pytest.raises(ValueError, match=r"expected section\.field=value"):
        trial_configs("smoke", overrides=["optim.epochs"])
    with pytest.raises(ValueError, match="identical"):
        trial_configs("smoke", overrides=["run.seed=0"])  # the grid varies the seed
    with pytest.raises(ValueError, match=r"unknown grid 'nope'.*smoke"):
        trial_configs("nope")
    with pytest.raises(ValueError, match="seeds"):
        grid_trials("smoke", seeds=0)


def test_check_unique_names_the_pair() -> None:
    config = TrialConfig()
    with pytest.raises(ValueError, match="trials 0 and 2 are identical"):
        check_unique([config, config.with_updates({"run.seed": 1}), config])


def test_resources_by_width() -> None:
    on_gpu = Resources(use_gpus=True)
    assert on_gpu.request(8) == {"CPU": 1.0, "GPU": 0.125}
    assert on_gpu.request(64) == {"CPU": 1.0, "GPU": 0.5}
    assert on_gpu.request(12) == {"CPU": 1.0, "GPU": 0.25}  # the next larger entry
    assert Resources(use_gpus=False).request(64) == {"CPU": 1.0}
    custom = Resources(parse_gpu_share("8=0.1,64=1"), cpus_per_trial=2, use_gpus=True)
    assert custom.request(32) == {"CPU": 2, "GPU": 1.0}
    with pytest.raises(ValueError, match=r"'8:0\.1'"):
        parse_gpu_share("8:0.1")
    with pytest.raises(ValueError, match="must be in"):
        Resources(parse_gpu_share("8=1.5"))


def test_cost_grows_with_width_and_epochs() -> None:
    resources = Resources(use_gpus=True)
    small = TrialConfig.from_dict({"model.width": 8})
    large = small.with_updates({"model.width": 64})
    assert 0 < gpu_hours(small, resources) < gpu_hours(large, resources)
    longer = small.with_updates({"optim.epochs": 200})
    assert gpu_hours(longer, resources) == pytest.approx(2 * gpu_hours(small, resources))
    report = format_dry_run("smoke", trial_configs("smoke"), resources)
    assert "grid smoke: 19 trials" in report and "GPU-hours" in report


def test_help_documents_every_option() -> None:
    parser = build_parser()
    assert all(action.help for action in parser._actions), "an option without help"
    text = parser.format_help()
    for option in (
        "--address",
        "--storage",
        "--tracking-uri",
        "--data-root",
        "--download",
        "--seeds",
        "--max-concurrent",
        "--resume",
        "--dry-run",
        "--gpu-share",
    ):
        assert option in text
    assert all(name in text for name in GRIDS)


def test_dry_run_prints_counts_and_cost(capsys: pytest.CaptureFixture) -> None:
    assert main(["fig4", "--dry-run", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "grid fig4: 40 trials" in out
    assert "estimated total" in out
