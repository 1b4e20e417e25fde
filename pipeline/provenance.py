"""Where a result came from: source commit, package versions, host, and the datasets' digests."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Dataset, DatasetInput, InputTag

from pipeline.run_contents import GIT_COMMIT_TAG

if TYPE_CHECKING:
    from pipeline.data import Dataset as DataSplit

VERSIONED_PACKAGES = ("iterconv", "torch", "torchvision", "ray", "mlflow", "numpy", "pandas")
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the split, shown beside the dataset's name
DIGEST_CHARS = 12


def git_commit() -> str:
    """Return the commit of the installed source tree, else $ITERCONV_GIT_COMMIT, else unknown."""
    source_root = Path(__file__).resolve().parent.parent
    commit = _read_git_head(source_root / ".git")
    if commit is not None:
        return commit
    return os.environ.get("ITERCONV_GIT_COMMIT", "unknown")


def _read_git_head(git_dir: Path) -> str | None:
    """Return HEAD's commit read from .git files (no git binary needed in the image)."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    try:
        return (git_dir / ref).read_text().strip()
    except OSError:
        pass
    try:
        packed = (git_dir / "packed-refs").read_text().splitlines()
    except OSError:
        return None
    for line in packed:
        commit, _, name = line.partition(" ")
        if name == ref:
            return commit
    return None


def package_versions() -> dict[str, str]:
    """Return the versions of Python and of the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def environment_tags() -> dict[str, str]:
    """Return the tags that say where and with which code a run was made."""
    tags = {GIT_COMMIT_TAG: git_commit(), "host": socket.gethostname()}
    tags |= {f"version.{name}": version for name, version in package_versions().items()}
    return tags


def dataset_digest(split: DataSplit) -> str:
    """Return a short SHA-256 of a split's images and targets: same digest, same examples."""
    digest = hashlib.sha256()
    for tensor in (split.images, split.targets):
        array = tensor.contiguous().numpy()
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.data.cast("B"))  # the bytes in place, no copy
    return digest.hexdigest()[:DIGEST_CHARS]


def dataset_input(split: DataSplit, root: str) -> DatasetInput:
    """Return a split as an MLflow dataset input: name, digest, size, shapes, split as context."""
    features = [-1, *split.images.shape[1:]]
    targets = [-1, *split.targets.shape[1:]]
    schema = {
        "mlflow_tensorspec": {
            "features": json.dumps([_tensor_spec(split.images.dtype, features)]),
            "targets": json.dumps([_tensor_spec(split.targets.dtype, targets)]),
        }
    }
    profile = {
        "num_rows": len(split),
        "features_shape": list(split.images.shape),
        "targets_shape": list(split.targets.shape),
    }
    dataset = Dataset(
        name=split.name,
        digest=dataset_digest(split),
        source_type="local",
        source=json.dumps({"uri": str(root)}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, split.split)])


def _tensor_spec(dtype: Any, shape: list[int]) -> dict[str, Any]:
    """Return MLflow's JSON form of a tensor column (dtype name without 'torch.')."""
    return {
        "type": "tensor",
        "tensor-spec": {"dtype": str(dtype).removeprefix("torch."), "shape": shape},
    }
