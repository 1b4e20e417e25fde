"""A user's own grid: a YAML file of base values, axes and extra trials (docs/grid-files.md).

    python sweeps/launch.py --grid-file my_grid.yaml [key=value ...] [--seeds N] [--dry-run]

A grid file is data, not code: it is read with PyYAML's safe loader, which builds only plain
mappings, lists and scalars, so no file the launcher reads can run code (docs/faults.md). Its
trials go through `sweeps.grids.trial_configs`, as a built-in grid's do: the same config
validation, launcher settings, overrides and refusals. The sweep records the file's digest
beside Tune's state, so `--resume` refuses a file whose trials changed since the sweep began.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import yaml

from pipeline.config import TrialConfig
from sweeps.grids import (
    DEFAULT_SEEDS,
    GRIDS,
    VARIANTS,
    TrialOverrides,
    check_seeds,
    validated_configs,
)
from sweeps.preflight import UsageError

FIELDS = ("name", "description", "base", "axes", "variants", "seeds", "trials")
NAME = re.compile(r"[a-z0-9_-]+")  # a grid name is a directory and an experiment name
# variants: the one named set of variants a file may cross its axes with.
NAMED_VARIANTS = {"paper": VARIANTS}
# Keys the launcher sets in every trial: a file's value would be overwritten unseen.
LAUNCHER_KEYS = {
    "run.seed": "seeds (and --seeds)",
    "data.root": "--data-root",
    "data.download": "--download",
    "run.threads": "--cpus-per-trial",
}
RECORD_FILE = "grid-file.json"  # in STORAGE/NAME beside Tune's state: the file's digest


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Return the mapping of a node, or raise naming the first repeated key and its line."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            with contextlib.suppress(TypeError):  # unhashable: the base class says so
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass(frozen=True)
class GridFile:
    """A grid read from a file: its name and conditions, each run with seeds 0..seeds-1."""

    path: str  # as given on the command line, for messages
    name: str
    description: str
    conditions: tuple[TrialOverrides, ...]  # flat dicts without run.seed, validated
    seeds: int  # the file's default; --seeds overrides it

    def trials(self, seeds: int | None = None) -> list[TrialOverrides]:
        """Return the flat dicts of every condition x seed (seeds innermost, as the built-ins)."""
        count = self.seeds if seeds is None else seeds
        return [{**c, "run.seed": seed} for c in self.conditions for seed in range(count)]

    def configs(
        self, seeds: int | None, settings: Mapping[str, Any], overrides: Sequence[str]
    ) -> list[TrialConfig]:
        """Return the validated configs of the sweep, as `trial_configs` returns a built-in's."""
        check_seeds(seeds)  # a built-in grid's merging, checks and messages
        return validated_configs(self.trials(seeds), settings, overrides)

    def digest(self) -> str:
        """Return the SHA-256 of the name, conditions and seeds: what a resume must find again."""
        content = {"name": self.name, "conditions": self.conditions, "seeds": self.seeds}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def load_grid_file(path: str) -> GridFile:
    """Return the grid of a YAML file, or raise UsageError in one line naming what is wrong."""
    document = _read(path)
    try:
        return _grid(path, document)
    except ValueError as error:  # the file's own values: say which file
        raise UsageError(f"{path}: {error}") from None


def _read(path: str) -> Any:
    """Return the parsed YAML of a file (only plain mappings, lists and scalars)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--grid-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UsageError(f"--grid-file {path}: cannot read it ({reason})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # A constructor error is valid YAML the safe loader will not build: a tag, a repeat.
        what = (
            "refused" if isinstance(error, yaml.constructor.ConstructorError) else "not valid YAML"
        )
        raise UsageError(f"--grid-file {path}: {what}{where}: {problem}") from None


def _grid(path: str, document: Any) -> GridFile:
    """Return the grid of a parsed file, or raise ValueError naming the first problem."""
    if not isinstance(document, dict):
        raise ValueError(
            f"must be a YAML mapping of {', '.join(FIELDS)}; got {type(document).__name__}"
        )
    unknown = [str(key) for key in document if key not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}: allowed are {', '.join(FIELDS)}")
    name = _name(document.get("name"))
    description = document.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description={description!r}: must be text")
    seeds = document.get("seeds", DEFAULT_SEEDS)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r}: must be an integer >= 1")
    base = _flat("base", document.get("base", {}))
    axes = _axes(document.get("axes", {}))
    variants = _variants(document.get("variants"))
    extra = document.get("trials", [])
    if not isinstance(extra, list):
        raise ValueError(f"trials={extra!r}: must be a list of mappings (section.field: value)")
    extras = [_flat(f"trials[{i}]", trial) for i, trial in enumerate(extra)]
    _check_disjoint(base, axes, variants)
    if not (axes or variants or extras):
        raise ValueError("no trials: give axes, variants, trials or a mix of them")
    conditions: list[TrialOverrides] = []
    if axes or variants:  # their product; variants outer and seeds innermost, as grids._product
        conditions = [
            {**base, **dict(zip(axes, values, strict=True)), **variant}
            for variant in variants or ({},)
            for values in itertools.product(*axes.values())
        ]
    conditions += [{**base, **trial} for trial in extras]
    _check_conditions(conditions)
    return GridFile(path, name, description, tuple(conditions), seeds)


def _name(name: Any) -> str:
    """Return the grid's name, or raise if it is missing, malformed or a built-in grid's."""
    if name is None:
        raise ValueError("name is missing: the grid's name, e.g. name: coupling-fine")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"name={name!r}: allowed are lower-case letters, digits, '-' and '_'")
    if name in GRIDS:
        raise ValueError(f"name={name!r}: a built-in grid's name; built-in are {', '.join(GRIDS)}")
    return name


def _flat(where: str, values: Any) -> TrialOverrides:
    """Return a mapping of flat config keys, or raise naming the first key that is not one."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}={values!r}: must be a mapping of section.field: value")
    for key in values:
        if not isinstance(key, str) or "." not in key:
            raise ValueError(
                f"{where}: key {key!r} is not a flat config key: write section.field, "
                "e.g. model.width"
            )
        if key in LAUNCHER_KEYS:
            raise ValueError(f"{where}: {key}: set by {LAUNCHER_KEYS[key]}; drop it from the file")
    return dict(values)


def _axes(axes: Any) -> dict[str, list[Any]]:
    """Return the axes: flat keys, each with a non-empty list of values."""
    _flat("axes", axes)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"axes: {key}={values!r}: must be a non-empty list of values")
    return dict(axes)


def _variants(variants: Any) -> tuple[TrialOverrides, ...]:
    """Return the variants crossed with the axes: none, or a named set (NAMED_VARIANTS)."""
    if variants is None:
        return ()
    if variants not in NAMED_VARIANTS:
        allowed = ", ".join(repr(n) for n in NAMED_VARIANTS)
        raise ValueError(
            f"variants={variants!r}: allowed are {allowed} (sweeps.grids.VARIANTS: the paper's "
            "five initialisations and couplings), or leave it out"
        )
    return NAMED_VARIANTS[variants]


def _check_disjoint(
    base: TrialOverrides, axes: Mapping[str, Any], variants: Sequence[TrialOverrides]
) -> None:
    """Raise if a key is in two of base, axes and variants: one would overwrite the other."""
    variant_keys = {key for variant in variants for key in variant}
    for key in base:
        if key in axes:
            raise ValueError(f"{key} is in base and in axes: give it in one of them")
    for key in [*base, *axes]:
        if key in variant_keys:
            raise ValueError(
                f"{key}: set by variants (with {', '.join(sorted(variant_keys))}); drop it "
                "from base and axes, or drop variants"
            )


def _check_conditions(conditions: Sequence[TrialOverrides]) -> None:
    """Raise TrialConfig's error for a bad key or value, or name two conditions that are equal."""
    seen: dict[tuple, int] = {}
    for index, condition in enumerate(conditions):
        identity = TrialConfig.from_dict(condition).identity()
        if identity in seen:
            raise ValueError(
                f"trials {seen[identity]} and {index} are the same trial ({condition}): "
                "each condition must differ"
            )
        seen[identity] = index


# ---------------------------------------------------------------- the record, for --resume


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Return the filesystem and path of a sweep directory (a local path or a URI)."""
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def write_record(grid: GridFile, sweep_path: str) -> None:
    """Write the grid's digest into the new sweep's directory, before Tune's state."""
    filesystem, root = _filesystem(sweep_path)
    filesystem.create_dir(root, recursive=True)
    record = {"grid_file": str(Path(grid.path).resolve()), "name": grid.name}
    record["sha256"] = grid.digest()
    with filesystem.open_output_stream(f"{root}/{RECORD_FILE}") as stream:
        stream.write((json.dumps(record, indent=2) + "\n").encode())


def remove_record(sweep_path: str) -> None:
    """Remove the record of a sweep that never started, and its directory if left empty."""
    filesystem, root = _filesystem(sweep_path)
    with contextlib.suppress(FileNotFoundError, OSError):
        filesystem.delete_file(f"{root}/{RECORD_FILE}")
        if not filesystem.get_file_info(pyarrow.fs.FileSelector(root)):
            filesystem.delete_dir(root)


def check_record(grid: GridFile, sweep_path: str) -> None:
    """Raise UsageError unless the sweep at `sweep_path` was started from this grid, unchanged."""
    filesystem, root = _filesystem(sweep_path)
    prefix = f"--resume --grid-file {grid.path}"
    try:
        with filesystem.open_input_stream(f"{root}/{RECORD_FILE}") as stream:
            record = json.loads(stream.readall())  # plain JSON: nothing in it runs
        stored = record["sha256"]
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{prefix}: the sweep at {sweep_path} has no record of a grid file ({RECORD_FILE}): "
            "it was not started from one; resume it by its GRID"
        ) from None
    if stored != grid.digest():
        raise UsageError(
            f"{prefix}: the file's trials changed since the sweep at {sweep_path} started "
            f"(digest {stored[:12]} then, {grid.digest()[:12]} now): restore the file as it "
            "was, or start a new sweep in another --storage"
        )


@contextlib.contextmanager
def recorded(grid: GridFile | None, sweep_path: str, resume: bool) -> Iterator[None]:
    """Record a new grid-file sweep for the duration of its run; remove it if Ray refused it."""
    if grid is None or resume:
        yield
        return
    write_record(grid, sweep_path)
    try:
        yield
    except UsageError:  # refused on the cluster, before Tune made the sweep: leave nothing
        remove_record(sweep_path)
        raise
