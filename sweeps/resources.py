"""What a trial asks of the cluster (GPU share by width, CPUs) and what a grid costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipeline.calibration import Calibration
from pipeline.config import TrialConfig
from vocabulary import TRAIN_IMAGES, variant_label

# Share of one GPU per trial by width: small models share a GPU (throughput per GPU is the
# goal, docs/benchmarks.md). Widths between entries take the next larger entry.
DEFAULT_GPU_SHARE: Mapping[int, float] = {8: 0.125, 16: 0.25, 32: 0.25, 64: 0.5}
# Rough throughput of one trial at N = 16 on its GPU share, in training images per second
# (ordinary blocks, bf16): the built-in guess, used until `make gpu-check` has written a
# measured calibration (pipeline/calibration.py); --dry-run says which one it prices with.
IMAGES_PER_SECOND: Mapping[int, float] = {8: 12_000, 16: 9_000, 32: 5_000, 64: 2_000}
REFERENCE_BLOCKS = 16  # N at which IMAGES_PER_SECOND holds; cost scales as N / 16
SPECTRAL_SLOWDOWN = 1.3  # ICR/PCR: a power-iteration step per block and training step
EVALUATION_PASSES = 0.5  # testing each epoch and the indices, in units of a training epoch


@dataclass(frozen=True)
class Resources:
    """Per-trial resource requests of a sweep."""

    gpu_share: Mapping[int, float] = field(default_factory=lambda: dict(DEFAULT_GPU_SHARE))
    cpus_per_trial: float = 1.0  # CPU cores per trial (also its torch threads, rounded up)
    use_gpus: bool = False  # False: CPU-only trials (no GPU in the cluster)

    def __post_init__(self) -> None:
        if not self.gpu_share:
            raise ValueError("gpu_share is empty: give at least one width=share entry")
        for width, share in self.gpu_share.items():
            if not 0 < share <= 1:
                raise ValueError(f"GPU share {share!r} for width {width}: must be in (0, 1]")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial={self.cpus_per_trial!r}: must be > 0")

    def share(self, width: int) -> float:
        """Return the table's GPU share for this width (the next larger entry if absent)."""
        larger = [w for w in sorted(self.gpu_share) if w >= width]
        return self.gpu_share[larger[0] if larger else max(self.gpu_share)]

    def request(self, width: int) -> dict[str, float]:
        """Return the Ray resource dict of one trial of this width."""
        if self.use_gpus:
            return {"CPU": self.cpus_per_trial, "GPU": self.share(width)}
        return {"CPU": self.cpus_per_trial}


def parse_gpu_share(text: str) -> dict[int, float]:
    """Return {width: share} from "8=0.125,16=0.25", or raise ValueError naming the entry."""
    table = {}
    for entry in text.split(","):
        width, sep, share = entry.partition("=")
        try:
            table[int(width)] = float(share)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"GPU share entry {entry!r}: expected width=share, e.g. 16=0.25")
    return table


def train_images(config: TrialConfig) -> int:
    """Return the images one training epoch of this trial sees."""
    d = config.data
    if d.train_size is not None:
        return d.train_size
    generated = d.generated_images("train")  # Digitclutter's and Pathfinder's: config values
    return TRAIN_IMAGES[d.dataset] if generated is None else generated


def gpu_hours(
    config: TrialConfig, resources: Resources, rates: Mapping[int, float] | None = None
) -> float:
    """Return the estimated GPU-hours of one trial: its time times its GPU share.

    `rates`: images/s of one trial on its share by width (default: IMAGES_PER_SECOND).
    """
    m = config.model
    rates = IMAGES_PER_SECOND if rates is None else rates
    rate = rates.get(m.width, min(rates.values()))
    seconds = config.optim.epochs * (1 + EVALUATION_PASSES) * train_images(config) / rate
    seconds *= m.blocks_per_stage / REFERENCE_BLOCKS
    if m.block != "ordinary":
        seconds *= SPECTRAL_SLOWDOWN
    return seconds * resources.share(m.width) / 3600


def calibrated_rates(
    calibration: Calibration | None,
) -> tuple[Mapping[int, float], str]:
    """Return the rates a grid is priced with and one line saying where they come from."""
    if calibration is None:
        return IMAGES_PER_SECOND, (
            "the built-in guess in sweeps/resources.py (no measured calibration: run "
            "`make gpu-check` on a GPU, see docs/gpu-check.md)"
        )
    return calibration.images_per_second, calibration.describe()


def grid_summary(
    configs: Sequence[TrialConfig],
    resources: Resources,
    rates: Mapping[int, float] | None = None,
) -> pd.DataFrame:
    """Return one row per trial: dataset, block, variant, width, train images, epochs, GPU-hours."""
    return pd.DataFrame(
        {
            "dataset": c.data.dataset,
            "block": c.model.block,
            "variant": variant_label(c.model.recurrent_init, c.coupling.lam),
            "width": c.model.width,
            "train_images": train_images(c),
            "epochs": c.optim.epochs,
            "gpu_hours": gpu_hours(c, resources, rates),
        }
        for c in configs
    )


def format_dry_run(
    name: str,
    configs: Sequence[TrialConfig],
    resources: Resources,
    calibration: Calibration | None = None,
) -> str:
    """Return the dry-run report: trial counts by dataset x variant, and the estimated cost."""
    rates, source = calibrated_rates(calibration)
    summary = grid_summary(configs, resources, rates)
    counts = pd.crosstab(
        [summary["dataset"], summary["block"]], summary["variant"], margins=True, margins_name="all"
    )
    by_width = summary.groupby("width")["gpu_hours"].agg(["count", "sum"])
    by_width.columns = ["trials", "gpu_hours"]
    total = summary["gpu_hours"].sum()
    return "\n".join(
        [
            f"grid {name}: {len(configs)} trials",
            "",
            "trials by dataset and variant:",
            counts.to_string(),
            "",
            "estimated cost by width (GPU-hours = time x GPU share; model in sweeps/resources.py):",
            by_width.round(1).to_string(),
            "",
            f"estimated total: {total:.1f} GPU-hours"
            f" (about {total / 8:.1f} hours on 8 GPUs kept full)",
            f"calibration: {source}",
        ]
    )
