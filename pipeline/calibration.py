"""The GPU calibration that `make gpu-check` measures: CUDA step mode and training rates.

`benchmarks/gpu_check.py` writes it on a GPU to `pipeline/calibration.json` (commit it to make it
the default everywhere, the cluster image included) or wherever `ITERCONV_CALIBRATION` points.
A trial on CUDA runs its `step_mode`; `sweeps/resources.py` prices a grid with its rates. No
file: eager steps and the built-in guess of sweeps/resources.py. Torch-free on purpose: the
launcher's dry run reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALIBRATION_ENV = "ITERCONV_CALIBRATION"
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")
CALIBRATION_FORMAT = 1
# The execution modes of pipeline/steps.py, here so that this torch-free module can check them.
STEP_MODES = ("eager", "compile", "cuda_graph")


@dataclass(frozen=True)
class Calibration:
    """Rates measured on one GPU model, and the step mode that was fastest and correct there."""

    path: str  # the file it was read from
    gpu: str  # torch.cuda.get_device_name(), e.g. "NVIDIA H200"
    measured_at: str  # ISO date and time of the measurement
    step_mode: str  # one of STEP_MODES: what a trial on CUDA runs
    # Training images per second of one trial on its GPU share (N = 16, batch 128), by width.
    images_per_second: dict[int, float]
    gpu_share: dict[int, float]  # the shares the rates were measured at

    def describe(self) -> str:
        """Return one line saying where the numbers come from."""
        return (
            f"measured by make gpu-check on {self.gpu} at {self.measured_at} ({self.path}; "
            f"step mode {self.step_mode})"
        )


def calibration_path() -> Path:
    """Return the calibration file in use: $ITERCONV_CALIBRATION, else pipeline/calibration.json."""
    return Path(os.environ.get(CALIBRATION_ENV) or DEFAULT_CALIBRATION)


def load_calibration(path: str | Path | None = None) -> Calibration | None:
    """Return the calibration at `path` (default: calibration_path()), None if there is none.

    Raises ValueError naming the file and the problem when it exists but cannot be used,
    e.g. it was measured on a CPU.
    """
    explicit = path is not None or bool(os.environ.get(CALIBRATION_ENV))
    path = Path(path) if path is not None else calibration_path()
    if not path.exists():
        if explicit:
            raise ValueError(f"calibration file {path}: does not exist (see docs/gpu-check.md)")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"calibration file {path}: not readable JSON ({error})") from None
    return parse_calibration(data, str(path))


def parse_calibration(data: Any, path: str) -> Calibration:
    """Return the Calibration in a decoded JSON document, or raise ValueError naming the field."""

    def fail(message: str) -> ValueError:
        return ValueError(f"calibration file {path}: {message}")

    if not isinstance(data, dict):
        raise fail("expected a JSON object")
    if data.get("format") != CALIBRATION_FORMAT:
        raise fail(f"format {data.get('format')!r}: this version reads {CALIBRATION_FORMAT}")
    if data.get("device") != "cuda" or data.get("quick", True):
        raise fail(
            f"measured with device {data.get('device')!r}, quick {data.get('quick')!r}: only a "
            "full run on a GPU calibrates (the quick CPU check does not)"
        )
    if data.get("step_mode") not in STEP_MODES:
        raise fail(f"step_mode {data.get('step_mode')!r}: allowed are {STEP_MODES}")
    tables = {}
    for key in ("images_per_second", "gpu_share"):
        table = data.get(key)
        try:
            if not isinstance(table, dict):
                raise TypeError
            tables[key] = {int(w): float(v) for w, v in table.items()}
        except (TypeError, ValueError):
            raise fail(f"{key} {table!r}: expected {{width: number}}") from None
        if not tables[key] or not all(v > 0 for v in tables[key].values()):
            raise fail(f"{key} {table!r}: expected positive numbers for at least one width")
    for key in ("gpu", "measured_at"):
        if not isinstance(data.get(key), str):
            raise fail(f"{key} {data.get(key)!r}: expected a string")
    return Calibration(
        path=path,
        gpu=data["gpu"],
        measured_at=data["measured_at"],
        step_mode=data["step_mode"],
        images_per_second=tables["images_per_second"],
        gpu_share=tables["gpu_share"],
    )


def cuda_step_mode() -> str:
    """Return the step mode a trial on CUDA runs: the calibration's, else eager."""
    calibration = load_calibration()
    return calibration.step_mode if calibration is not None else "eager"
