"""Named grids of trials: the paper's whole design, one sub-grid per figure, `smoke`, and beyond.

Each grid is a function `grid(seeds) -> list[TrialOverrides]` of flat override dicts
("model.width": 8, ...); `trial_configs` turns them into validated TrialConfigs. Run one with

    python sweeps/launch.py GRID [key=value ...] [--seeds N] [--dry-run]

`--dry-run` prints each grid's trial count and estimated GPU-hours (sweeps/resources.py);
the figures of each grid are listed in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pipeline.config import TrialConfig, parse_overrides
from vocabulary import (
    CONVERGENT_BLOCKS,
    CONVERGENT_MU,
    COUPLINGS,
    PAPER_DATASETS,
    PATHFINDER,
    WIDTHS,
    matches_level,
)

TrialOverrides = dict[str, Any]  # flat override dict of one trial, e.g. {"model.width": 8}
GridFunction = Callable[[int], list[TrialOverrides]]

# Initialisation and coupling (paper Fig 3): non-recurrent lam 0, recurrent lam 0, 0.5, 0.9, 1.
VARIANTS: tuple[TrialOverrides, ...] = (
    {"model.recurrent_init": False, "coupling.lam": 0.0},
    *({"model.recurrent_init": True, "coupling.lam": lam} for lam in COUPLINGS),
)
COUPLED_VARIANTS = VARIANTS[2:]  # lam > 0: where a coupling kernel can matter
# Sample efficiency (S3): training-set sizes in images. A reduced set keeps the full run's
# epoch count (optim.epochs), so it also takes fewer steps: the paper does not say which,
# and equal epochs is how "sample efficiency" is usually read (same passes over less data).
SAMPLE_EFFICIENCY = {"cifar10": (5_000, 10_000, 20_000), "digitclutter-5": (10_000, 30_000)}
# Partial coupling: the paper contradicts itself. S4 Fig: "the first five blocks in each stage
# were uncoupled"; its Discussion: "only the last eight layers" were coupled. The grid follows
# S4 Fig, the figure whose results it reproduces: coupling.first_coupled = 5 of N = 16.
TRAINING_VARIATIONS: tuple[tuple[TrialOverrides, tuple[TrialOverrides, ...]], ...] = (
    ({"model.bn_gamma_init": 0.1}, VARIANTS),  # S4a
    ({"coupling.kernel": "triangular"}, COUPLED_VARIANTS),  # S4b
    ({"coupling.first_coupled": 5}, COUPLED_VARIANTS),  # S4c: first five blocks uncoupled
)
DEFAULT_SEEDS = 3
# Fig 2 shows six instances of one network: ordinary, non-recurrent, width 16, CIFAR-10.
FIG2_INSTANCES = 6
FIG2_CONDITION: TrialOverrides = {"data.dataset": "cifar10", "model.width": 16, **VARIANTS[0]}
# Pathfinder's ICR and PCR run at the middle difficulty, as the paper's run on its main dataset.
PATHFINDER_CONVERGENT = PATHFINDER[len(PATHFINDER) // 2]  # "pathfinder-9"

GRIDS: dict[str, GridFunction] = {}


def register(function: GridFunction) -> GridFunction:
    """Add a grid function to GRIDS under its own name."""
    GRIDS[function.__name__] = function
    return function


def _product(
    base: TrialOverrides, variants: Iterable[TrialOverrides], widths: Iterable[int], seeds: int
) -> list[TrialOverrides]:
    """Return base x variants x widths x seeds as flat dicts."""
    return [
        {**base, **variant, "model.width": width, "run.seed": seed}
        for variant in variants
        for width in widths
        for seed in range(seeds)
    ]


def main_trials(
    seeds: int = DEFAULT_SEEDS, datasets: Sequence[str] = PAPER_DATASETS
) -> list[TrialOverrides]:
    """Return ordinary ResNets: each dataset (default the paper's six) x 5 variants x 4 widths."""
    return [
        trial
        for dataset in datasets
        for trial in _product({"data.dataset": dataset}, VARIANTS, WIDTHS, seeds)
    ]


def convergent_trials(seeds: int = DEFAULT_SEEDS, dataset: str = "cifar10") -> list[TrialOverrides]:
    """Return ICR and PCR (μ = CONVERGENT_MU) on one dataset (CIFAR-10) x 5 variants x 4 widths."""
    return [
        trial
        for block in CONVERGENT_BLOCKS
        for trial in _product(
            {"data.dataset": dataset, "model.block": block, "model.mu": CONVERGENT_MU},
            VARIANTS,
            WIDTHS,
            seeds,
        )
    ]


def sample_efficiency_trials(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Return reduced training sets (S3): CIFAR-10 and Digitclutter-5 x 5 variants x 4 widths."""
    return [
        trial
        for dataset, sizes in SAMPLE_EFFICIENCY.items()
        for size in sizes
        for trial in _product(
            {"data.dataset": dataset, "data.train_size": size}, VARIANTS, WIDTHS, seeds
        )
    ]


def training_variation_trials(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Return S4's variations on CIFAR-10: BN gamma 0.1, triangular kernel, first five uncoupled."""
    return [
        trial
        for change, variants in TRAINING_VARIATIONS
        for trial in _product({"data.dataset": "cifar10", **change}, variants, WIDTHS, seeds)
    ]


def _where(trials: Iterable[TrialOverrides], **levels: Any) -> list[TrialOverrides]:
    """Return the trials at every given level; keys are flat keys with dots written as __."""
    wanted = {key.replace("__", "."): level for key, level in levels.items()}
    return [
        trial
        for trial in trials
        if all(matches_level(trial.get(key), level) for key, level in wanted.items())
    ]


def fig2_instances(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Return the seeds beyond `seeds` that give Fig 2 its six instances (none if seeds >= 6)."""
    return [{**FIG2_CONDITION, "run.seed": seed} for seed in range(seeds, FIG2_INSTANCES)]


@register
def paper_grid(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """The paper's whole design: 915 trials with 3 seeds (304 per seed, + 3 for Fig 2).

    main (6 datasets x 5 variants x 4 widths) + ICR/PCR on CIFAR-10 + sample efficiency
    (S3) + training variations (S4) + Fig 2's condition up to six seeds. Cost: `--dry-run`
    prints the estimate (about 164 GPU-hours at 100 epochs by the built-in guess); run it on
    a GPU cluster: `ray submit sweeps/cluster.yaml sweeps/launch.py -- paper_grid`.
    """
    return (
        main_trials(seeds)
        + convergent_trials(seeds)
        + sample_efficiency_trials(seeds)
        + training_variation_trials(seeds)
        + fig2_instances(seeds)
    )


@register
def fig2(seeds: int = FIG2_INSTANCES) -> list[TrialOverrides]:
    """Fig 2, standard training: six instances of the ordinary non-recurrent width-16 ResNet.

    On CIFAR-10: `python sweeps/launch.py fig2` (6 trials, a few GPU-hours).
    """
    return [{**FIG2_CONDITION, "run.seed": seed} for seed in range(seeds)]


@register
def fig3(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Fig 3 (and S1a), coupled ResNets on CIFAR-10 and Digitclutter-5: 120 trials with 3 seeds.

    `python sweeps/launch.py fig3`; the baseline of S4 too.
    """
    return _where(main_trials(seeds), data__dataset=("cifar10", "digitclutter-5"))


@register
def fig4(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Fig 4 (and S1b), improperly convergent ResNets (ICR) on CIFAR-10: 60 trials with 3 seeds.

    `python sweeps/launch.py fig4`; compare with fig3's ordinary CIFAR-10 trials.
    """
    return _where(convergent_trials(seeds), model__block="icr")


@register
def s2(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """S2 Fig, properly convergent ResNets (PCR) on CIFAR-10: 60 trials with 3 seeds.

    `python sweeps/launch.py s2`.
    """
    return _where(convergent_trials(seeds), model__block="pcr")


@register
def s3(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """S3 Fig, Digitclutter-3/4/5, CIFAR-100, MNIST and reduced training sets: 600 trials.

    `python sweeps/launch.py s3` (3 seeds; the full-size CIFAR-10 baseline is in fig3).
    """
    others = _where(main_trials(seeds), data__dataset=PAPER_DATASETS[1:])
    return others + sample_efficiency_trials(seeds)


@register
def s4(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """S4 and S5 Fig, training variations on CIFAR-10: 132 trials with 3 seeds.

    `python sweeps/launch.py s4`; their baseline is fig3's CIFAR-10 trials.
    """
    return training_variation_trials(seeds)


@register
def pathfinder(seeds: int = DEFAULT_SEEDS) -> list[TrialOverrides]:
    """Beyond the paper: Fig 3's design on Pathfinder-6/9/14, ICR and PCR on Pathfinder-9.

    The task the paper's Discussion names for iterative computation over long-range context
    (docs/method.md, Pathfinder): 3 difficulties x 5 variants x 4 widths (180 trials with 3
    seeds) + ICR and PCR (μ = CONVERGENT_MU) on pathfinder-9 (120): 300 trials, about 118
    GPU-hours at 100 epochs of 100,000 images by the built-in guess (`--dry-run` prints it).
    `python sweeps/launch.py pathfinder`; the sets are generated once per data root before the
    trials start (about 40 minutes for pathfinder-14 on one core, docs/data.md). Not part of
    paper_grid; its figure is `pathfinder`, its claims the `pathfinder-*` rows.
    """
    return main_trials(seeds, PATHFINDER) + convergent_trials(seeds, PATHFINDER_CONVERGENT)


SMOKE_BASE: TrialOverrides = {
    "data.dataset": "digitclutter-3",
    "data.clutter_train_images": 3_000,
    "data.clutter_test_images": 500,
    "data.index_examples": 256,
    "model.width": 8,
    "model.blocks_per_stage": 3,
    # 12,000 training images in all, at a high peak rate without warm-up: the sigmoid loss of
    # Digitclutter's ten outputs gives small gradients. Measured for the baseline on one core:
    # peak lr 1.0 ended at 0.92 after 3 epochs of 4,000 images, 2.0 at 0.78, 4.0 at 0.58,
    # 8.0 at 0.62, 16.0 at 0.83 (chance 0.99); 2,000 images x 6 epochs at 0.69.
    "optim.epochs": 4,
    "optim.batch_size": 32,
    "optim.lr": 4.0,
    "optim.warmup_epochs": 0,
    "run.extra_evaluations": 4,
}
NONREC, REC1 = VARIANTS[0], VARIANTS[4]


@register
def smoke(seeds: int = 2) -> list[TrialOverrides]:
    """Nineteen small CPU trials on Digitclutter-3 that give every figure and claim runs to judge.

    The ordinary ResNet in all five variants (non-rec.; rec. 0, 0.5, 0.9, 1), ICR and PCR
    non-rec. and rec. 1, each `seeds` times; one training variation (BN gamma 0.1, non-rec.,
    seed 0). 3,000 images, N = 3, width 8, 4 epochs: `python sweeps/launch.py smoke` runs 19
    trials of 12,000 training images each, offline, one per CPU core; 5 minutes on 2 idle
    cores (docs/benchmarks.md).
    """
    ordinary = {**SMOKE_BASE, "model.block": "ordinary"}
    icr = {**SMOKE_BASE, "model.block": "icr", "model.mu": CONVERGENT_MU}
    pcr = {**SMOKE_BASE, "model.block": "pcr", "model.mu": CONVERGENT_MU}
    trials = [
        {**base, **variant, "run.seed": seed}
        for base, variants in ((ordinary, VARIANTS), (icr, (NONREC, REC1)), (pcr, (NONREC, REC1)))
        for variant in variants
        for seed in range(seeds)
    ]
    trials.append({**ordinary, **NONREC, "model.bn_gamma_init": 0.1, "run.seed": 0})
    return trials


def grid_trials(name: str, seeds: int | None = None) -> list[TrialOverrides]:
    """Return the flat dicts of a registered grid, or raise ValueError listing the grids."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}: known grids are {', '.join(GRIDS)}")
    check_seeds(seeds)
    return GRIDS[name]() if seeds is None else GRIDS[name](seeds)


def check_seeds(seeds: int | None) -> None:
    """Raise ValueError unless `seeds` is None (the grid's default) or at least 1."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds={seeds!r}: must be an integer >= 1")


def trial_configs(
    name: str,
    seeds: int | None = None,
    settings: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> list[TrialConfig]:
    """Return a grid's validated configs: grid values, then `settings`, then overrides.

    `settings` are the launcher's per-sweep values (data.root, run.threads); `overrides` are
    the user's "section.field=value" strings. Raise ValueError if any config is invalid or if
    the overrides make two trials identical.
    """
    return validated_configs(grid_trials(name, seeds), settings, overrides)


def validated_configs(
    trials: Sequence[TrialOverrides],
    settings: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> list[TrialConfig]:
    """Return the configs of any grid's flat dicts (built-in or a grid file), as trial_configs."""
    updates = {**(settings or {}), **parse_overrides(overrides)}
    configs = [TrialConfig.from_dict({**trial, **updates}) for trial in trials]
    check_unique(configs)
    return configs


def check_unique(configs: Sequence[TrialConfig]) -> None:
    """Raise ValueError naming the first pair of configs that are equal."""
    seen: dict[tuple, int] = {}
    for index, config in enumerate(configs):
        key = config.identity()
        if key in seen:
            raise ValueError(
                f"trials {seen[key]} and {index} are identical ({config.to_flat_dict()}): "
                "an override sets a key the grid varies"
            )
        seen[key] = index
