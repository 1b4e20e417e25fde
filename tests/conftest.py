"""Shared fixtures: tiny datasets in their real on-disk formats under a temporary data root,
one torch thread, injected faults, and real processes (an `mlflow server` on 127.0.0.1, a shared
Digitclutter root). Fixtures are lazy: the session's server starts only when a test asks for it.

What test modules share besides fixtures (the dataset writers among it) is in helpers.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from helpers import write_cifar, write_dataset, write_mnist
from iterconv_faults import fail_as_epoch_starts

from sweeps.tracking_server import TrackingServer, start_tracking_server

if TYPE_CHECKING:
    from mlflow import MlflowClient


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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """Yield a running `mlflow server` (SQLite store, served artifacts) on a free port."""
    root = tmp_path_factory.mktemp("mlflow")
    server = start_tracking_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log"
    )
    try:
        yield server
    finally:
        server.stop()
    assert server.process.poll() is not None, "mlflow server still running after stop()"


@pytest.fixture
def mlflow_client(mlflow_server: TrackingServer) -> MlflowClient:
    """Return a client of the session's tracking server."""
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.uri)


@pytest.fixture(scope="session")
def sweep_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a data root shared by the sweep tests (Digitclutter caches are generated once)."""
    return tmp_path_factory.mktemp("sweep-data")
