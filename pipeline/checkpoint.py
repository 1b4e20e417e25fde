"""A trial's checkpoint: its format, the previous one kept beside it, RNG capture and restore."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.config import TrialConfig

if TYPE_CHECKING:
    from pipeline.train import Trial

# A child of the trial's logger: a damaged checkpoint is told in the trial's log.
logger = logging.getLogger("iterconv.train.checkpoint")

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"config", "epoch", "history", "model", "optimizer", "rng"})


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (its path is in the message)."""


def _rng_state() -> dict[str, Any]:
    """Return every RNG state as tensors and numbers: what torch.load(weights_only) accepts."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(gauss),
        "python_version": int(version),
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss": python_gauss,  # None or a float
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by _rng_state."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"])
    )
    python_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], python_state, state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def previous_checkpoint(path: Path) -> Path:
    """Return where the checkpoint before `path` is kept (checkpoint.previous.pt)."""
    return path.with_name(path.stem + ".previous" + path.suffix)


def has_checkpoint(path: Path) -> bool:
    """Return True if `path` or the checkpoint before it exists (a trial to resume)."""
    return path.exists() or previous_checkpoint(path).exists()


def save_checkpoint(path: Path, trial: Trial, history: list[dict[str, float]]) -> None:
    """Write everything needed to resume bit-for-bit, atomically; keep the one before it."""
    state = {
        "config": trial.config.to_dict(),
        "epoch": len(history),
        "history": history,
        "model": trial.model.state_dict(),  # includes BN statistics and power-iteration vectors
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "train_loader": trial.train_loader.state_dict(),
        "rng": _rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    # Two checkpoints: one damaged file still leaves a good one to resume from.
    if path.exists():
        os.replace(path, previous_checkpoint(path))
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Return a checkpoint's contents; raise CorruptCheckpointError naming a damaged file."""
    try:
        # weights_only: tensors, numbers, strings and containers; a file cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not state.keys() >= CHECKPOINT_KEYS:
            raise ValueError("not a trial checkpoint (its keys are missing)")
    except Exception as error:  # torch raises many types for damaged zip or pickle data
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CorruptCheckpointError(f"damaged checkpoint {path}: {first_line}") from error
    return state


def load_checkpoint(path: Path, trial: Trial) -> list[dict[str, float]]:
    """Restore a trial from its checkpoint, else from the one before; return epochs' history."""
    problems = []
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.exists():
            continue
        try:
            state = _read_checkpoint(candidate)
        except CorruptCheckpointError as error:
            logger.warning("%s; trying the previous checkpoint", error)
            problems.append(str(error))
            continue
        _restore(candidate, state, trial)
        return list(state["history"])
    raise CorruptCheckpointError("; ".join(problems) or f"no checkpoint at {path}")


def _restore(path: Path, state: dict[str, Any], trial: Trial) -> None:
    """Load a checkpoint's state into the trial, refusing one of another trial."""
    # A retry may run elsewhere (another node, device or data mount): same trial, same identity.
    saved = dict(TrialConfig.from_dict(state["config"]).identity())
    here = dict(trial.config.identity())
    differing = [key for key, value in here.items() if saved[key] != value]
    if differing:
        raise ValueError(
            f"checkpoint {path} belongs to another trial: {differing[0]}={saved[differing[0]]!r} "
            f"there, {here[differing[0]]!r} here"
        )
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    trial.train_loader.load_state_dict(state["train_loader"])
    _set_rng_state(state["rng"])
