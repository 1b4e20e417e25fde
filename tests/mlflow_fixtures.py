"""Fixtures with real processes: an `mlflow server` on 127.0.0.1 and a shared Digitclutter root.

Import the fixtures into a test module (`from mlflow_fixtures import mlflow_server`; pytest puts
tests/ on sys.path) or list this module in `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.tracking_server import TrackingServer, start_tracking_server


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
    return MlflowClient(mlflow_server.uri)


@pytest.fixture(scope="session")
def sweep_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a data root shared by the sweep tests (Digitclutter caches are generated once)."""
    return tmp_path_factory.mktemp("sweep-data")
