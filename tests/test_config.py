"""TrialConfig: defaults, round trips, overrides, and one clear error per bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from models import ResNetConfig
from pipeline.config import (
    SECTIONS,
    TrialConfig,
    apply_overrides,
    flat_keys,
    network_shape,
    parse_value,
)
from pipeline.tasks import TASKS, task_for
from vocabulary import BLOCK_TYPES

CONTRACT_DEFAULTS = {
    "model.width": 16,
    "model.blocks_per_stage": 16,
    "model.block": "ordinary",
    "model.mu": 0.95,
    "model.recurrent_init": False,
    "model.bn_gamma_init": 1.0,
    "model.arch": "preact",
    "coupling.lam": 0.0,
    "coupling.kernel": "uniform",
    "coupling.bandwidth": None,
    "coupling.first_coupled": 0,
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
    "optim.batch_size": 128,
    "optim.epochs": 100,
    "optim.warmup_epochs": 1,
    "data.dataset": "cifar10",
    "data.root": "data",
    "data.download": False,
    "data.train_size": None,
    "data.index_examples": None,
    "data.clutter_train_images": 100_000,
    "data.clutter_test_images": 10_000,
    "data.pathfinder_train_images": 100_000,
    "data.pathfinder_test_images": 10_000,
    "run.seed": 0,
    "run.device": "auto",
    "run.extra_evaluations": 16,
    "run.threads": None,
}

CUSTOM = {
    "model.width": 8,
    "model.blocks_per_stage": 4,
    "model.block": "pcr",
    "model.mu": 0.9,
    "model.recurrent_init": True,
    "model.bn_gamma_init": 0.1,
    "model.arch": "preact",
    "coupling.lam": 0.5,
    "coupling.kernel": "triangular",
    "coupling.bandwidth": 1.5,
    "coupling.first_coupled": 2,
    "optim.lr": 0.05,
    "optim.momentum": 0.0,
    "optim.nesterov": False,
    "optim.weight_decay": 0.0,
    "optim.batch_size": 64,
    "optim.epochs": 3,
    "optim.warmup_epochs": 0,
    "data.dataset": "digitclutter-4",
    "data.root": "/shared/data",
    "data.download": True,
    "data.train_size": 1000,
    "data.index_examples": 500,
    "data.clutter_train_images": 2000,
    "data.clutter_test_images": 300,
    "data.pathfinder_train_images": 4000,
    "data.pathfinder_test_images": 1000,
    "run.seed": 7,
    "run.device": "cpu",
    "run.extra_evaluations": 4,
    "run.threads": 1,
}


def test_defaults_are_the_contract_and_every_key_is_listed() -> None:
    assert TrialConfig().to_flat_dict() == CONTRACT_DEFAULTS
    assert list(TrialConfig().to_flat_dict()) == flat_keys()
    assert set(CUSTOM) == set(CONTRACT_DEFAULTS)


def test_every_section_is_frozen_and_every_field_has_a_default() -> None:
    config = TrialConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.width = 8  # type: ignore[misc]
    for cls in SECTIONS.values():
        assert dataclasses.is_dataclass(cls)
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("values", [CONTRACT_DEFAULTS, CUSTOM], ids=["defaults", "custom"])
def test_round_trips_are_exact(values: dict) -> None:
    config = TrialConfig.from_dict(values)
    assert config.to_flat_dict() == values
    assert TrialConfig.from_dict(config.to_flat_dict()) == config
    assert TrialConfig.from_dict(config.to_dict()) == config
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["model"]["width"] == values["model.width"]


def test_from_dict_mixes_nested_and_flat_and_fills_defaults() -> None:
    config = TrialConfig.from_dict({"model": {"width": 8}, "optim.lr": 0.05})
    assert config.model.width == 8
    assert config.optim.lr == 0.05
    assert config.model.blocks_per_stage == 16
    with pytest.raises(ValueError, match=r"'model\.width' is given twice"):
        TrialConfig.from_dict({"model": {"width": 8}, "model.width": 4})


def test_overrides_parse_literals_and_bare_words() -> None:
    config = apply_overrides(
        TrialConfig(),
        [
            "optim.lr=0.05",
            "data.dataset='mnist'",
            "data.root=scratch/data",
            "model.recurrent_init=True",
            "coupling.lam=1",  # an int is a valid float
            "coupling.bandwidth=3",
            "data.train_size=5000",
            "data.index_examples=None",
            " run.device = cpu ",
        ],
    )
    assert config.optim.lr == 0.05
    assert config.data.dataset == "mnist"
    assert config.data.root == "scratch/data"
    assert config.model.recurrent_init is True
    assert config.coupling.lam == 1.0 and isinstance(config.coupling.lam, float)
    assert config.coupling.bandwidth == 3.0 and isinstance(config.coupling.bandwidth, float)
    assert config.data.train_size == 5000
    assert config.run.device == "cpu"
    assert TrialConfig().optim.lr == 0.1  # the original is untouched


def test_bare_word_applies_only_to_string_fields() -> None:
    assert apply_overrides(TrialConfig(), ["data.dataset=mnist"]).data.dataset == "mnist"
    # a numeric-looking directory name stays a string
    assert apply_overrides(TrialConfig(), ["data.root=2024"]).data.root == "2024"
    with pytest.raises(ValueError, match=r"optim\.lr='fast'.*not a Python literal.*float"):
        apply_overrides(TrialConfig(), ["optim.lr=fast"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.width=8.0", r"model\.width=8\.0: expected int, got float"),
        ("model.width=True", r"model\.width=True: expected int, got bool"),
        ("model.recurrent_init=1", r"model\.recurrent_init=1: expected bool, got int"),
        ("optim.lr='0.1'", r"optim\.lr='0\.1': expected float, got str"),
        ("coupling.lam=None", r"coupling\.lam=None: expected float, got NoneType"),
        ("data.train_size=1.5", r"data\.train_size=1\.5: expected int or None, got float"),
        ("coupling.bandwidth=[1]", r"coupling\.bandwidth=\[1\]: expected float or None"),
    ],
)
def test_override_type_errors_name_key_value_and_type(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrialConfig(), [override])


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"model.width": 0}, r"model\.width=0: must be an integer >= 1"),
        ({"model.blocks_per_stage": 1}, r"model\.blocks_per_stage=1: must be an integer >= 2"),
        (
            {"model.block": "dense"},
            r"model\.block='dense': allowed are " + re.escape(str(BLOCK_TYPES)),
        ),
        ({"model.mu": 1.5}, r"model\.mu=1\.5: must be in \(0, 1\]"),
        ({"model.mu": 0.0}, r"model\.mu=0\.0: must be in \(0, 1\]"),
        ({"model.bn_gamma_init": -1.0}, r"model\.bn_gamma_init=-1\.0: must be a finite"),
        ({"coupling.lam": 1.2}, r"coupling\.lam=1\.2: must be in \[0, 1\]"),
        ({"coupling.lam": float("nan")}, r"coupling\.lam=nan: must be in \[0, 1\]"),
        ({"coupling.kernel": "gauss"}, r"coupling\.kernel='gauss': allowed are \('uniform'"),
        ({"coupling.bandwidth": 0.0}, r"coupling\.bandwidth=0\.0: must be None or a number > 0"),
        ({"coupling.first_coupled": 16}, r"coupling\.first_coupled=16: must be in 0\.\.15"),
        ({"coupling.first_coupled": -1}, r"coupling\.first_coupled=-1: must be an integer >= 0"),
        ({"optim.lr": 0.0}, r"optim\.lr=0\.0: must be a number > 0"),
        ({"optim.lr": float("inf")}, r"optim\.lr=inf: must be a number > 0"),
        ({"optim.momentum": 1.0}, r"optim\.momentum=1\.0: must be in \[0, 1\)"),
        ({"optim.momentum": 0.0}, r"optim\.nesterov=True: Nesterov needs optim\.momentum > 0"),
        ({"optim.weight_decay": -0.1}, r"optim\.weight_decay=-0\.1: must be >= 0"),
        ({"optim.batch_size": 0}, r"optim\.batch_size=0: must be an integer >= 1"),
        ({"optim.epochs": 0}, r"optim\.epochs=0: must be an integer >= 1"),
        ({"optim.warmup_epochs": 101}, r"optim\.warmup_epochs=101: must be in 0\.\.100"),
        ({"data.dataset": "imagenet"}, r"data\.dataset='imagenet': allowed are \['cifar10'"),
        ({"data.root": ""}, r"data\.root='': must be a non-empty path"),
        ({"data.train_size": 0}, r"data\.train_size=0: must be an integer >= 1"),
        ({"data.index_examples": -5}, r"data\.index_examples=-5: must be an integer >= 1"),
        ({"data.clutter_test_images": 0}, r"data\.clutter_test_images=0: must be an integer"),
        ({"data.pathfinder_test_images": 0}, r"data\.pathfinder_test_images=0: must be an int"),
        ({"data.pathfinder_train_images": 999}, r"images=999: must be even \(balanced classes"),
        ({"run.seed": -1}, r"run\.seed=-1: allowed are 0\.\.4294967295"),
        ({"run.seed": 2**32}, r"run\.seed=4294967296: allowed are 0\.\.4294967295"),
        ({"run.device": "tpu"}, r"run\.device='tpu': allowed are \('auto', 'cpu', 'cuda'\)"),
        ({"run.extra_evaluations": 0}, r"run\.extra_evaluations=0: must be an integer >= 1"),
        ({"run.threads": 0}, r"run\.threads=0: must be an integer >= 1"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(updates: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrialConfig().with_updates(updates)


def test_generated_sizes_are_the_keys_of_the_datasets_family() -> None:
    sizes = {
        "data.clutter_train_images": 3000,
        "data.clutter_test_images": 500,
        "data.pathfinder_train_images": 4000,
        "data.pathfinder_test_images": 1000,
    }
    for dataset, train, test in (
        ("digitclutter-4", 3000, 500),
        ("pathfinder-14", 4000, 1000),
        ("cifar10", None, None),
    ):
        data = TrialConfig.from_dict({**sizes, "data.dataset": dataset}).data
        assert (data.generated_images("train"), data.generated_images("test")) == (train, test)
        assert data.generated_sizes("test") == {"clutter_images": 500, "pathfinder_images": 1000}
    pathfinder = TrialConfig.from_dict({"data.dataset": "pathfinder-6"})
    assert pathfinder.task.chance_error == 0.5 and pathfinder.task.num_classes == 2


def test_unknown_keys_are_errors_listing_the_known_keys() -> None:
    with pytest.raises(ValueError, match=r"'model\.widht'.*known keys of 'model' are \['width'"):
        TrialConfig.from_dict({"model.widht": 8})
    with pytest.raises(ValueError, match=r"'optim\.learning_rate'.*known keys of 'optim'"):
        TrialConfig.from_dict({"optim": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match=r"'training'.*known sections are \['model', 'coupl"):
        TrialConfig.from_dict({"training": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"'foo\.bar'.*known sections are"):
        apply_overrides(TrialConfig(), ["foo.bar=1"])
    with pytest.raises(ValueError, match=r"override 'optim\.lr': expected section\.field=value"):
        apply_overrides(TrialConfig(), ["optim.lr"])
    with pytest.raises(ValueError, match=r"section 'model' must be a mapping"):
        TrialConfig.from_dict({"model": 8})


def test_construction_validates_and_coerces() -> None:
    config = TrialConfig(coupling=SECTIONS["coupling"](lam=1))
    assert config.coupling.lam == 1.0 and isinstance(config.coupling.lam, float)
    with pytest.raises(ValueError, match=r"model\.width='8': expected int, got str"):
        TrialConfig(model=SECTIONS["model"](width="8"))
    # the paper couples only recurrently initialised networks, but the other case is allowed
    assert TrialConfig().with_updates({"coupling.lam": 0.5}).model.recurrent_init is False


def test_with_updates_returns_a_new_validated_config() -> None:
    config = TrialConfig()
    updated = config.with_updates({"model.width": 8, "coupling": {"lam": 0.9}})
    assert (updated.model.width, updated.coupling.lam) == (8, 0.9)
    assert config.model.width == 16
    # blocks_per_stage and first_coupled are checked together, whatever the order of updates
    with pytest.raises(ValueError, match=r"coupling\.first_coupled=5: must be in 0\.\.3"):
        config.with_updates({"coupling.first_coupled": 5, "model.blocks_per_stage": 4})


def test_parse_value_types_follow_the_field() -> None:
    assert parse_value("model.width", "8") == 8
    assert parse_value("optim.lr", "1") == 1.0
    assert parse_value("data.train_size", "None") is None
    assert parse_value("model.block", "icr") == "icr"
    assert parse_value("optim.nesterov", "False") is False


@pytest.mark.parametrize("dataset", sorted(TASKS))
def test_network_shape_for_every_dataset(dataset: str) -> None:
    config = TrialConfig.from_dict(
        {"data.dataset": dataset, "model.width": 8, "model.block": "icr", "model.mu": 0.9}
    )
    assert isinstance(config.model, ResNetConfig)
    assert (config.model.width, config.model.block, config.model.mu) == (8, "icr", 0.9)
    shape = network_shape(config)
    assert shape["in_channels"] == (3 if dataset.startswith("cifar") else 1)
    assert shape["num_classes"] == task_for(dataset).num_classes


def test_numpy_scalars_become_python_values() -> None:
    # Configs read back from Parquet or pandas carry NumPy scalars.
    config = TrialConfig.from_dict(
        {
            "model.width": np.int64(8),
            "coupling.lam": np.float64(0.5),
            "optim.lr": np.int32(1),
            "model.recurrent_init": np.bool_(True),
        }
    )
    flat = config.to_flat_dict()
    assert [type(flat[k]) for k in ("model.width", "coupling.lam", "optim.lr")] == [
        int,
        float,
        float,
    ]
    assert flat["model.recurrent_init"] is True
    with pytest.raises(ValueError, match=r"model\.width=.*8\.0.*: expected int, got float64"):
        TrialConfig.from_dict({"model.width": np.float64(8.0)})
