"""The trial config: frozen sections (model, coupling, optim, data, run), flat keys, overrides."""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models import ResNetConfig
from models.torchvision_resnet import stage_block_counts, torchvision_name
from models.typed_fields import Checked, allowed_types, coerce, type_names
from pipeline.tasks import Task, task_for
from vocabulary import (
    CLUTTER_IMAGES,
    DATASETS,
    DEVICES,
    DIGITCLUTTER,
    INPUT_CHANNELS,
    KERNELS,
    PATHFINDER,
    PATHFINDER_IMAGES,
    PREACT,
)

MAX_SEED = 2**32 - 1  # NumPy's np.random.seed accepts 0..2**32 - 1
MIN_EXTRA_EVALUATIONS = 1  # K: the Divergence Index is a mean over k = 1..K


def check_extra_evaluations(k: Any, key: str = "run.extra_evaluations") -> None:
    """Raise ValueError unless K, the extra applications of the last block, is an int >= 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_EXTRA_EVALUATIONS:
        raise ValueError(f"{key}={k!r}: must be an integer >= {MIN_EXTRA_EVALUATIONS}")


@dataclass(frozen=True)
class CouplingSection(Checked):
    """Soft gradient coupling between the blocks of a stage (0: independent, 1: shared)."""

    SECTION = "coupling"

    lam: float = 0.0  # coupling strength lambda in [0, 1]
    kernel: str = "uniform"  # "uniform" or "triangular" weighting over blocks
    bandwidth: float | None = None  # kernel half-width in blocks; None: N / 2
    first_coupled: int = 0  # 0-based index of the first coupled block (S4c: 5)

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        self.require("lam", 0 <= self.lam <= 1, "must be in [0, 1]")
        self.require("kernel", self.kernel in KERNELS, f"allowed are {KERNELS}")
        bandwidth_ok = self.bandwidth is None or (
            math.isfinite(self.bandwidth) and self.bandwidth > 0
        )
        self.require("bandwidth", bandwidth_ok, "must be None or a number > 0")
        self.require("first_coupled", self.first_coupled >= 0, "must be an integer >= 0")

    def check_first_coupled(self, num_blocks: int, allowed: str) -> None:
        """Raise ValueError "coupling.first_coupled=k: allowed" unless k is one of N blocks."""
        # The upper end needs N, which the section alone does not know: the config and the
        # coupler each pass theirs, with the words that name where N came from.
        self.require("first_coupled", self.first_coupled < num_blocks, allowed)


@dataclass(frozen=True)
class OptimSection(Checked):
    """SGD with Nesterov momentum, linear warm-up then cosine decay per step."""

    SECTION = "optim"

    lr: float = 0.1  # peak learning rate per 128 examples (scaled by batch_size / 128)
    momentum: float = 0.9  # SGD momentum in [0, 1)
    nesterov: bool = True  # Nesterov momentum (needs momentum > 0)
    weight_decay: float = 5e-4  # L2 penalty per step, >= 0
    batch_size: int = 128  # examples per step
    epochs: int = 100  # passes over the training split
    warmup_epochs: int = 1  # epochs of linear warm-up from 0 to the peak lr

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        self.require("lr", math.isfinite(self.lr) and self.lr > 0, "must be a number > 0")
        self.require("momentum", 0 <= self.momentum < 1, "must be in [0, 1)")
        self.require(
            "nesterov",
            not (self.nesterov and self.momentum == 0),
            "Nesterov needs optim.momentum > 0",
        )
        decay_ok = math.isfinite(self.weight_decay) and self.weight_decay >= 0
        self.require("weight_decay", decay_ok, "must be >= 0")
        self.require_positive("batch_size", "epochs")
        self.require(
            "warmup_epochs",
            0 <= self.warmup_epochs <= self.epochs,
            f"must be in 0..{self.epochs} (optim.epochs)",
        )


@dataclass(frozen=True)
class DataSection(Checked):
    """Which dataset, where it lives, and which subsets train and measure the indices."""

    SECTION = "data"

    dataset: str = "cifar10"  # a name in vocabulary.DATASETS
    root: str = "data"  # directory of the torchvision files and the generated sets' caches
    download: bool = False  # let torchvision download missing files
    train_size: int | None = None  # seeded subset of the training split in images; None: all
    index_examples: int | None = None  # test images for the indices (seeded subset); None: all
    clutter_train_images: int = CLUTTER_IMAGES["train"]  # Digitclutter training images generated
    clutter_test_images: int = CLUTTER_IMAGES["test"]  # Digitclutter test images generated
    pathfinder_train_images: int = PATHFINDER_IMAGES["train"]  # Pathfinder training images
    pathfinder_test_images: int = PATHFINDER_IMAGES["test"]  # Pathfinder test images generated

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        self.require("dataset", self.dataset in DATASETS, f"allowed are {sorted(DATASETS)}")
        self.require("root", self.root != "", "must be a non-empty path")
        self.require_positive(
            "train_size",
            "index_examples",
            "clutter_train_images",
            "clutter_test_images",
            "pathfinder_train_images",
            "pathfinder_test_images",
        )
        # Pathfinder's labels alternate in pairs: an even size holds as many of each class.
        for name in ("pathfinder_train_images", "pathfinder_test_images"):
            self.require(name, getattr(self, name) % 2 == 0, "must be even (balanced classes)")

    def generated_sizes(self, split: str) -> dict[str, int]:
        """Return load_dataset's sizes of the generated sets for a split (train or test)."""
        if split == "train":
            return {
                "clutter_images": self.clutter_train_images,
                "pathfinder_images": self.pathfinder_train_images,
            }
        return {
            "clutter_images": self.clutter_test_images,
            "pathfinder_images": self.pathfinder_test_images,
        }

    def generated_images(self, split: str) -> int | None:
        """Return the images of data.dataset's split if it is generated, else None (torchvision)."""
        sizes = self.generated_sizes(split)
        if self.dataset in DIGITCLUTTER:
            return sizes["clutter_images"]
        if self.dataset in PATHFINDER:
            return sizes["pathfinder_images"]
        return None


@dataclass(frozen=True)
class RunSection(Checked):
    """Seed, device and evaluation settings of one trial."""

    SECTION = "run"

    seed: int = 0  # seeds weights, batch order, subsets and augmentation
    device: str = "auto"  # "auto" (CUDA if available), "cpu" or "cuda"
    extra_evaluations: int = 16  # K extra applications of the last block for the DI
    threads: int | None = None  # torch CPU threads; None: torch's default

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        # NumPy's seed is 32-bit: a larger one would fail in every trial.
        self.require("seed", 0 <= self.seed <= MAX_SEED, f"allowed are 0..{MAX_SEED}")
        self.require("device", self.device in DEVICES, f"allowed are {DEVICES}")
        check_extra_evaluations(self.extra_evaluations)
        self.require_positive("threads")


# Keys that say where and how a trial runs, not what it computes: two runs that differ only
# here are the same trial (a retry may move, aggregation counts them once).
RUN_LOCAL_KEYS = ("data.root", "data.download", "run.device", "run.threads")

SECTIONS: dict[str, type[Any]] = {
    "model": ResNetConfig,
    "coupling": CouplingSection,
    "optim": OptimSection,
    "data": DataSection,
    "run": RunSection,
}


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """Return {"section.field": value} from nested and/or flat dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if not isinstance(key, str):
            raise ValueError(f"config key {key!r}: keys must be strings")
        if "." in key:
            items = [(key, value)]
        elif key in SECTIONS and isinstance(value, Mapping):
            items = [(f"{key}.{name}", v) for name, v in value.items()]
        elif key in SECTIONS:
            raise ValueError(f"config section {key!r} must be a mapping, got {value!r}")
        else:
            raise ValueError(f"unknown config section {key!r}: known sections are {list(SECTIONS)}")
        for flat_key, v in items:
            if flat_key in flat:
                raise ValueError(f"config key {flat_key!r} is given twice")
            flat[flat_key] = v
    return flat


def _split_key(key: str) -> tuple[str, str]:
    """Return (section, field) of a flat key, or raise naming the known keys."""
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ValueError(f"unknown config key {key!r}: known sections are {list(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in names:
        raise ValueError(f"unknown config key {key!r}: known keys of {section!r} are {names}")
    return section, name


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial; validated on construction."""

    model: ResNetConfig = field(default_factory=ResNetConfig)
    coupling: CouplingSection = field(default_factory=CouplingSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        # Each section checked itself when built; here only what spans sections.
        for section, cls in SECTIONS.items():
            value = getattr(self, section)
            if not isinstance(value, cls):
                raise ValueError(f"TrialConfig.{section}={value!r}: expected a {cls.__name__}")
        n = self.model.blocks_per_stage
        self.model.require(
            "blocks_per_stage", n >= 2, "must be an integer >= 2 (the indices compare blocks)"
        )
        if self.model.arch == PREACT:
            self.coupling.check_first_coupled(
                n, f"must be in 0..{n - 1} (model.blocks_per_stage={n})"
            )
        else:
            # torchvision fixes the blocks: its smallest stage bounds the uncoupled ones.
            counts = stage_block_counts(torchvision_name(self.model.arch))
            self.coupling.check_first_coupled(
                min(counts),
                f"must be in 0..{min(counts) - 1} (the stages of model.arch="
                f"{self.model.arch!r} have {list(counts)} blocks)",
            )

    def identity(self) -> tuple[tuple[str, Any], ...]:
        """Return what makes two trials the same: the values of identity_keys(), in order."""
        flat = self.to_flat_dict()
        return tuple((key, flat[key]) for key in identity_keys())

    def _section_flat(self, section: str) -> dict[str, Any]:
        value = getattr(self, section)
        return {f"{section}.{f.name}": getattr(value, f.name) for f in dataclasses.fields(value)}

    @property
    def task(self) -> Task:
        """Return the Task of data.dataset (classes, loss, error, chance error)."""
        return task_for(self.data.dataset)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """Return a validated config from nested and/or flat dotted keys (missing: defaults)."""
        values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, value in _flatten(d).items():
            section, name = _split_key(key)
            values[section][name] = value
        return cls(**{section: SECTIONS[section](**v) for section, v in values.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the config as {section: {field: value}} (JSON-friendly)."""
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """Return the config as {"section.field": value}, sections and fields in order."""
        flat: dict[str, Any] = {}
        for section in SECTIONS:
            flat.update(self._section_flat(section))
        return flat

    def with_updates(self, updates: Mapping[str, Any]) -> TrialConfig:
        """Return a new validated config with `updates` (flat dotted or nested) applied."""
        return TrialConfig.from_dict({**self.to_flat_dict(), **_flatten(updates)})


def flat_keys() -> list[str]:
    """Return every flat key ("model.width", ...) in section and field order."""
    return list(TrialConfig().to_flat_dict())


def identity_keys() -> list[str]:
    """Return the flat keys that make a trial's identity: every flat key but RUN_LOCAL_KEYS."""
    return [key for key in flat_keys() if key not in RUN_LOCAL_KEYS]


def parse_value(key: str, text: str) -> Any:
    """Return the typed value of `text` for flat key `key` (literal_eval; bare words as str)."""
    section, name = _split_key(key)
    allowed = allowed_types(SECTIONS[section], name)
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if str not in allowed:
            raise ValueError(
                f"{key}={text!r}: not a Python literal; expected {type_names(allowed)}"
            ) from None
        return text
    if str in allowed and not isinstance(value, allowed):
        return text  # e.g. data.root=2024 is a directory name, not a number
    return coerce(key, value, allowed)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Return {"section.field": typed value} of "section.field=value" strings."""
    updates: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected section.field=value, e.g. optim.lr=0.05")
        updates[key.strip()] = parse_value(key.strip(), text)
    return updates


def apply_overrides(cfg: TrialConfig, overrides: Iterable[str]) -> TrialConfig:
    """Return a new validated config with each "section.field=value" override applied."""
    return cfg.with_updates(parse_overrides(overrides))


def network_shape(cfg: TrialConfig) -> dict[str, int]:
    """Return build_model's input channels and classes for the trial's dataset."""
    return {"in_channels": INPUT_CHANNELS[cfg.data.dataset], "num_classes": cfg.task.num_classes}


__all__ = [
    "RUN_LOCAL_KEYS",
    "SECTIONS",
    "CouplingSection",
    "DataSection",
    "OptimSection",
    "RunSection",
    "TrialConfig",
    "apply_overrides",
    "check_extra_evaluations",
    "flat_keys",
    "identity_keys",
    "network_shape",
    "parse_overrides",
    "parse_value",
]
