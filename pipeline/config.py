"""The trial config: frozen sections (model, coupling, optim, data, run), flat keys, overrides."""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import BLOCK_TYPES, ResNetConfig
from pipeline.coupling import KERNELS
from pipeline.tasks import TASKS, Task, task_for

DEVICES = ("auto", "cpu", "cuda")
# MNIST and Digitclutter are grey; CIFAR is RGB.
INPUT_CHANNELS: dict[str, int] = {name: 3 if name.startswith("cifar") else 1 for name in TASKS}


@dataclass(frozen=True)
class ModelSection:
    """The ResNet: width, depth, block type, spectral cap and initialisation."""

    width: int = 16  # channels of stage 1 (stages 2 and 3 use 2x and 4x)
    blocks_per_stage: int = 16  # N residual blocks per stage (>= 2: the indices compare blocks)
    block: str = "ordinary"  # "ordinary", "icr" (z + f~(z)) or "pcr" (x + f~(z))
    mu: float = 0.95  # Lipschitz cap of f~ for ICR/PCR blocks, in (0, 1]
    recurrent_init: bool = False  # all blocks of a stage start as copies of block 1
    bn_gamma_init: float = 1.0  # initial BN gamma inside the blocks (paper S4a: 0.1)


@dataclass(frozen=True)
class CouplingSection:
    """Soft gradient coupling between the blocks of a stage (0: independent, 1: shared)."""

    lam: float = 0.0  # coupling strength lambda in [0, 1]
    kernel: str = "uniform"  # "uniform" or "triangular" weighting over blocks
    bandwidth: float | None = None  # kernel half-width in blocks; None: N / 2
    first_coupled: int = 0  # 0-based index of the first coupled block (S4c: 5)


@dataclass(frozen=True)
class OptimSection:
    """SGD with Nesterov momentum, linear warm-up then cosine decay per step."""

    lr: float = 0.1  # peak learning rate per 128 examples (scaled by batch_size / 128)
    momentum: float = 0.9  # SGD momentum in [0, 1)
    nesterov: bool = True  # Nesterov momentum (needs momentum > 0)
    weight_decay: float = 5e-4  # L2 penalty per step, >= 0
    batch_size: int = 128  # examples per step
    epochs: int = 100  # passes over the training split
    warmup_epochs: int = 1  # epochs of linear warm-up from 0 to the peak lr


@dataclass(frozen=True)
class DataSection:
    """Which dataset, where it lives, and which subsets train and measure the indices."""

    dataset: str = "cifar10"  # a name in pipeline.tasks.TASKS
    root: str = "data"  # directory of the torchvision files and the Digitclutter cache
    download: bool = False  # let torchvision download missing files
    train_size: int | None = None  # seeded subset of the training split in images; None: all
    index_examples: int | None = None  # test images for the indices (seeded subset); None: all
    clutter_train_images: int = 100_000  # Digitclutter training images generated
    clutter_test_images: int = 10_000  # Digitclutter test images generated


@dataclass(frozen=True)
class RunSection:
    """Seed, device and test-only controls of one trial."""

    seed: int = 0  # seeds weights, batch order, subsets and augmentation
    device: str = "auto"  # "auto" (CUDA if available), "cpu" or "cuda"
    extra_evaluations: int = 16  # K extra applications of the last block for the DI
    fail_at_epoch: int | None = (
        None  # test-only: raise InjectedFault as this epoch starts (1-based)
    )
    threads: int | None = None  # torch CPU threads; None: torch's default


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "coupling": CouplingSection,
    "optim": OptimSection,
    "data": DataSection,
    "run": RunSection,
}


@functools.cache
def _allowed_types(section: type, name: str) -> tuple[type, ...]:
    """Return the types a field accepts, from its annotation (None included if Optional)."""
    # Cached: resolving the string annotations is most of the cost of building a config, and
    # a paper-scale grid builds about a thousand.
    hint = typing.get_type_hints(section)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(type(None) if arg is type(None) else arg for arg in typing.get_args(hint))
    return (hint,)


def _type_names(allowed: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in allowed)


def _coerce(key: str, value: Any, allowed: tuple[type, ...]) -> Any:
    """Return value as the field's Python type (ints pass as floats, NumPy scalars as Python)."""
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool | np.bool_):
        if bool in allowed:
            return bool(value)
    elif isinstance(value, numbers.Integral) and (int in allowed or float in allowed):
        return int(value) if int in allowed else float(value)
    elif isinstance(value, numbers.Real) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return str(value)
    raise ValueError(
        f"{key}={value!r}: expected {_type_names(allowed)}, got {type(value).__name__}"
    )


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


def _split_key_types(key: str) -> tuple[type, str]:
    section, name = _split_key(key)
    return SECTIONS[section], name


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: {allowed}")


def _positive(key: str, value: int | None, optional: bool = False) -> None:
    if optional and value is None:
        return
    _check(key, value, value is not None and value >= 1, "must be an integer >= 1")


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial; validated on construction."""

    model: ModelSection = field(default_factory=ModelSection)
    coupling: CouplingSection = field(default_factory=CouplingSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        for section, cls in SECTIONS.items():
            value = getattr(self, section)
            if not isinstance(value, cls):
                raise ValueError(f"TrialConfig.{section}={value!r}: expected a {cls.__name__}")
            coerced = {
                f.name: _coerce(
                    f"{section}.{f.name}", getattr(value, f.name), _allowed_types(cls, f.name)
                )
                for f in dataclasses.fields(cls)
            }
            object.__setattr__(self, section, cls(**coerced))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first flat key whose value is not allowed."""
        for section in SECTIONS:
            for key, value in self._section_flat(section).items():
                _coerce(key, value, _allowed_types(*_split_key_types(key)))
        self._validate_model()
        self._validate_coupling()
        self._validate_optim()
        self._validate_data()
        self._validate_run()

    def _validate_model(self) -> None:
        m = self.model
        _positive("model.width", m.width)
        _check(
            "model.blocks_per_stage",
            m.blocks_per_stage,
            m.blocks_per_stage >= 2,
            "must be an integer >= 2 (the indices compare blocks)",
        )
        _check("model.block", m.block, m.block in BLOCK_TYPES, f"allowed are {BLOCK_TYPES}")
        _check("model.mu", m.mu, 0 < m.mu <= 1, "must be in (0, 1]")
        gamma_ok = math.isfinite(m.bn_gamma_init) and m.bn_gamma_init > 0
        _check("model.bn_gamma_init", m.bn_gamma_init, gamma_ok, "must be a finite number > 0")

    def _validate_coupling(self) -> None:
        c, n = self.coupling, self.model.blocks_per_stage
        _check("coupling.lam", c.lam, 0 <= c.lam <= 1, "must be in [0, 1]")
        _check("coupling.kernel", c.kernel, c.kernel in KERNELS, f"allowed are {KERNELS}")
        bandwidth_ok = c.bandwidth is None or (math.isfinite(c.bandwidth) and c.bandwidth > 0)
        _check("coupling.bandwidth", c.bandwidth, bandwidth_ok, "must be None or a number > 0")
        _check(
            "coupling.first_coupled",
            c.first_coupled,
            0 <= c.first_coupled < n,
            f"must be in 0..{n - 1} (model.blocks_per_stage={n})",
        )

    def _validate_optim(self) -> None:
        o = self.optim
        _check("optim.lr", o.lr, math.isfinite(o.lr) and o.lr > 0, "must be a number > 0")
        _check("optim.momentum", o.momentum, 0 <= o.momentum < 1, "must be in [0, 1)")
        _check(
            "optim.nesterov",
            o.nesterov,
            not (o.nesterov and o.momentum == 0),
            "Nesterov needs optim.momentum > 0",
        )
        _check(
            "optim.weight_decay",
            o.weight_decay,
            math.isfinite(o.weight_decay) and o.weight_decay >= 0,
            "must be >= 0",
        )
        _positive("optim.batch_size", o.batch_size)
        _positive("optim.epochs", o.epochs)
        _check(
            "optim.warmup_epochs",
            o.warmup_epochs,
            0 <= o.warmup_epochs <= o.epochs,
            f"must be in 0..{o.epochs} (optim.epochs)",
        )

    def _validate_data(self) -> None:
        d = self.data
        _check("data.dataset", d.dataset, d.dataset in TASKS, f"allowed are {sorted(TASKS)}")
        _check("data.root", d.root, d.root != "", "must be a non-empty path")
        _positive("data.train_size", d.train_size, optional=True)
        _positive("data.index_examples", d.index_examples, optional=True)
        _positive("data.clutter_train_images", d.clutter_train_images)
        _positive("data.clutter_test_images", d.clutter_test_images)

    def _validate_run(self) -> None:
        r = self.run
        _check("run.seed", r.seed, r.seed >= 0, "must be an integer >= 0")
        _check("run.device", r.device, r.device in DEVICES, f"allowed are {DEVICES}")
        _positive("run.extra_evaluations", r.extra_evaluations)
        _positive("run.fail_at_epoch", r.fail_at_epoch, optional=True)
        _positive("run.threads", r.threads, optional=True)

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


def parse_value(key: str, text: str) -> Any:
    """Return the typed value of `text` for flat key `key` (literal_eval; bare words as str)."""
    allowed = _allowed_types(*_split_key_types(key))
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if str not in allowed:
            raise ValueError(
                f"{key}={text!r}: not a Python literal; expected {_type_names(allowed)}"
            ) from None
        return text
    if str in allowed and not isinstance(value, allowed):
        return text  # e.g. data.root=2024 is a directory name, not a number
    return _coerce(key, value, allowed)


def apply_overrides(cfg: TrialConfig, overrides: Iterable[str]) -> TrialConfig:
    """Return a new validated config with each "section.field=value" override applied."""
    updates: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected section.field=value, e.g. optim.lr=0.05")
        key = key.strip()
        _split_key(key)
        updates[key] = parse_value(key, text)
    return cfg.with_updates(updates)


def model_config(cfg: TrialConfig, task: Task | None = None) -> ResNetConfig:
    """Return the ResNetConfig of a trial (input channels from the dataset, classes from task)."""
    task = task or cfg.task
    m = cfg.model
    return ResNetConfig(
        in_channels=INPUT_CHANNELS[cfg.data.dataset],
        num_classes=task.num_classes,
        width=m.width,
        blocks_per_stage=m.blocks_per_stage,
        block=m.block,
        mu=m.mu,
        recurrent_init=m.recurrent_init,
        bn_gamma_init=m.bn_gamma_init,
    )


__all__ = [
    "DEVICES",
    "INPUT_CHANNELS",
    "KERNELS",
    "SECTIONS",
    "CouplingSection",
    "DataSection",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "TrialConfig",
    "apply_overrides",
    "flat_keys",
    "model_config",
    "parse_value",
]
