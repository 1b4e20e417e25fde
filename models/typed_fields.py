"""Frozen config sections that coerce each field to its annotated type and check it once."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, ClassVar

import numpy as np

# Cached: resolving the string annotations is most of the cost of building a config, and a
# paper-scale grid builds about a thousand.
_ALLOWED_TYPES: dict[tuple[type, str], tuple[type, ...]] = {}


def allowed_types(section: type, name: str) -> tuple[type, ...]:
    """Return the types a field accepts, from its annotation (None included if Optional)."""
    if (section, name) not in _ALLOWED_TYPES:
        hint = typing.get_type_hints(section)[name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        _ALLOWED_TYPES[section, name] = tuple(typing.get_args(hint)) if union else (hint,)
    return _ALLOWED_TYPES[section, name]


def type_names(allowed: tuple[type, ...]) -> str:
    """Return "int or None" for the types a field accepts."""
    return " or ".join("None" if t is type(None) else t.__name__ for t in allowed)


def coerce(key: str, value: Any, allowed: tuple[type, ...]) -> Any:
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
    raise ValueError(f"{key}={value!r}: expected {type_names(allowed)}, got {type(value).__name__}")


class Checked:
    """Base of a frozen dataclass section: fields typed on construction, then `check()`ed."""

    SECTION: ClassVar[str]  # the section's name in flat keys, e.g. "model" in "model.width"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}"
            value = coerce(key, getattr(self, f.name), allowed_types(type(self), f.name))
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""

    def require(self, name: str, ok: bool, allowed: str) -> None:
        """Raise ValueError "section.name=value: allowed" unless `ok`."""
        if not ok:
            raise ValueError(f"{self.SECTION}.{name}={getattr(self, name)!r}: {allowed}")

    def require_positive(self, *names: str) -> None:
        """Raise unless each named field is None (where allowed) or an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            self.require(name, value is None or value >= 1, "must be an integer >= 1")
