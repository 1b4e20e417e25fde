"""Shared fixtures: tiny datasets in their real on-disk formats under a temporary data root.

Writers of CIFAR pickles and MNIST idx.gz files: each class has its own mean intensity (and, for
CIFAR, colour), so a small network learns them in a few steps; pixel noise keeps images distinct.
"""

from __future__ import annotations

import gzip
import pickle
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from iterconv_faults import fail_as_epoch_starts

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
    "cifar100": ("cifar-100-python", ["train"], "test"),
}


def class_images(
    labels: np.ndarray, classes: int, channels: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Return uint8 [N, C, size, size] images whose per-channel mean level encodes the class."""
    # Class k: channel c at a level spread over 30..225, distinct per channel for colour.
    levels = np.stack(
        [
            30 + 195 * ((np.arange(classes) * (2 * c + 1)) % classes) / max(classes - 1, 1)
            for c in range(channels)
        ],
        axis=1,
    )  # [classes, C]
    noise = rng.normal(0.0, 12.0, size=(len(labels), channels, size, size))
    images = levels[labels][:, :, None, None] + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def balanced_labels(count: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Return `count` labels cycling through the classes, shuffled."""
    return rng.permutation(np.arange(count) % classes).astype(np.int64)


def write_cifar(
    root: Path, name: str = "cifar10", n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write a tiny CIFAR-10 or CIFAR-100 in torchvision's layout under root; return root."""
    folder, train_files, test_file = CIFAR_LAYOUT[name]
    classes = 10 if name == "cifar10" else 100
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    rng = np.random.default_rng(seed)
    directory = Path(root) / folder
    directory.mkdir(parents=True, exist_ok=True)
    train_labels = balanced_labels(n_train, classes, rng)
    parts = np.array_split(np.arange(n_train), len(train_files))
    batches = [(file, train_labels[part]) for file, part in zip(train_files, parts, strict=True)]
    batches.append((test_file, balanced_labels(n_test, classes, rng)))
    for file, labels in batches:
        images = class_images(labels, classes, 3, 32, rng)
        batch = {
            b"batch_label": file.encode(),
            label_key: [int(v) for v in labels],
            b"data": images.reshape(len(labels), 3072),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
        if name == "cifar100":
            batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
        with open(directory / file, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return Path(root)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped idx file (MNIST's format)."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a tiny MNIST (gzipped idx files) in torchvision's layout under root; return root."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = balanced_labels(count, 10, rng)
        images = class_images(labels, 10, 1, 28, rng)[:, 0]
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return Path(root)


def write_dataset(
    name: str, root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write a tiny "mnist", "cifar10" or "cifar100" under root; return root."""
    if name == "mnist":
        return write_mnist(root, n_train, n_test, seed)
    return write_cifar(root, name, n_train, n_test, seed)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread: tiny networks lose more to thread start-up than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset_writer() -> Callable[..., Path]:
    """Return write_dataset(name, root, n_train=200, n_test=100, seed=0) -> root."""
    return write_dataset


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """Return a data root holding a CIFAR-10 of 200 train / 100 test images (real layout)."""
    return write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """Return a data root holding a CIFAR-100 of 200 train / 100 test images (real layout)."""
    return write_cifar(tmp_path / "data", "cifar100", n_train=200, n_test=100)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """Return a data root holding an MNIST of 200 train / 100 test images (gzipped idx)."""
    return write_mnist(tmp_path / "data", n_train=200, n_test=100)


@pytest.fixture
def inject_fault() -> Iterator[Callable[[int], None]]:
    """Return `inject(epoch)`: the next trial in this process fails once as `epoch` starts."""
    undo: list[Callable[[], None]] = []
    yield lambda epoch: undo.append(fail_as_epoch_starts(epoch))
    for step in reversed(undo):
        step()
