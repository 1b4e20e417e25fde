"""Doors locked: files we read cannot run code, secrets stay out of logs, nothing listens openly."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import LAUNCH, REPO, TINY_SWEEP, clean_env, explain, launch, runs_of, stop_group
from mlflow import MlflowClient

from pipeline.data import UnsafeDatasetError, load_dataset
from sweeps.tracking_server import (
    OpenServiceError,
    free_port,
    mask_uri,
    server_problem,
    split_credentials,
    start_tracking_server,
    tracking_server,
)


class CreatesAFile:
    """A pickle payload: unpickling it calls open(path, "w"), which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_cifar_batch_that_would_run_code_is_refused(cifar10_root: Path, tmp_path: Path) -> None:
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    planted = tmp_path / "planted-by-pickle"
    with open(batch, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content[b"batch_label"] = CreatesAFile(planted)
    batch.write_bytes(pickle.dumps(content, protocol=2))

    # The payload is live: a plain unpickler (in another process) does create the file.
    witness = tmp_path / "witness"
    payload = pickle.dumps(CreatesAFile(witness), protocol=2)
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=payload, check=True)
    assert witness.exists()

    with pytest.raises(UnsafeDatasetError, match=r"unsafe cifar10 file .*data_batch_2.*open"):
        load_dataset("cifar10", cifar10_root, "train")
    assert not planted.exists()


# Secrets stay secret.


def test_passwords_are_masked_and_split_from_uris() -> None:
    uri = "postgresql://mlflow:p%40ss@db:5432/mlflow"
    assert mask_uri(uri) == "postgresql://mlflow:***@db:5432/mlflow"
    assert mask_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert split_credentials("https://admin:p%40ss@mlflow.lab:5000/x") == (
        "https://mlflow.lab:5000/x",
        "admin",
        "p@ss",
    )


def test_password_in_a_tracking_uri_is_never_printed(tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    uri = f"http://admin:{password}@127.0.0.1:{free_port()}"
    result = launch("smoke", "--tracking-uri", uri, "--storage", str(tmp_path / "results"))
    assert result.returncode == 2, explain(result)
    # The credentials were moved to the environment first: the message has the bare URI.
    assert "tracking server http://127.0.0.1:" in result.stderr
    assert password not in result.stdout + result.stderr


def process_arguments() -> str:
    """Return the command lines of every process on this machine, joined."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return "\n".join(lines)


def listening_addresses(port: int) -> set[str]:
    """Return the local IPv4/IPv6 addresses (hex, as in /proc/net) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.slow
def test_launchers_server_listens_on_loopback_and_keeps_the_store_out_of_argv(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'store-with-a-secret-name.db'}"
    with tracking_server(store, tmp_path / "artifacts", tmp_path / "server.log") as server:
        port = int(server.uri.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        assert "store-with-a-secret-name" not in process_arguments()
    with pytest.raises(OpenServiceError, match="--expose-tracking-server-without-auth"):
        start_tracking_server(store, tmp_path / "artifacts", tmp_path / "x.log", host="0.0.0.0")


def test_launcher_refuses_an_open_server_without_the_flag(tmp_path: Path) -> None:
    result = launch("smoke", "--mlflow-host=0.0.0.0", "--storage", str(tmp_path / "results"))
    assert result.returncode == 2, explain(result)
    assert "--mlflow-host=0.0.0.0" in result.stderr
    assert "--expose-tracking-server-without-auth" in result.stderr
    assert not (tmp_path / "results").exists()


# No open service by default: the compose entrypoint, run for real.


def entrypoint(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run docker/mlflow-entrypoint.sh with `env` (over this environment) to its end."""
    return subprocess.run(
        ["sh", str(REPO / "docker" / "mlflow-entrypoint.sh")],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_entrypoint_refuses_an_open_bind_without_basic_auth(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = entrypoint({"MLFLOW_BACKEND_STORE_URI": store, "MLFLOW_BIND_ADDRESS": "10.0.0.5"})
    assert result.returncode == 2, result.stderr
    assert "refusing MLFLOW_BIND_ADDRESS=10.0.0.5 without basic auth" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the server never started


def test_entrypoint_keeps_the_auth_database_apart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        "MLFLOW_BACKEND_STORE_URI": store,
        "MLFLOW_BIND_ADDRESS": "10.0.0.5",
        "MLFLOW_BASIC_AUTH": "true",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 16,
        "MLFLOW_AUTH_DATABASE_URI": store,
    }
    result = entrypoint(env)
    assert result.returncode == 2, result.stderr
    assert "must not be the tracking store" in result.stderr


@pytest.fixture(scope="module")
def basic_auth_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, Path]]:
    """Yield (uri, admin password, folder) of the entrypoint's basic-auth server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("auth-server")
    password = secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{root / 'auth' / 'basic_auth.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_BASIC_AUTH": "true",
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            ["sh", str(REPO / "docker" / "mlflow-entrypoint.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while server_problem(uri, 2.0) is not None:
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield uri, password, root
    finally:
        stop_group(process)


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    """Return the HTTP status of a GET, with basic auth if given."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_entrypoint_server_asks_for_a_password_and_stores_users_apart(basic_auth_server) -> None:
    uri, password, root = basic_auth_server
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, ("admin", "wrong")) == 401
    assert http_status(search, ("admin", password)) == 200
    assert (root / "auth" / "basic_auth.db").exists()
    with sqlite3.connect(root / "mlflow.db") as tracking_db:
        tables = {row[0] for row in tracking_db.execute("SELECT name FROM sqlite_master")}
    assert "users" not in tables and "runs" in tables
    assert password not in process_arguments()
    assert str(root / "mlflow.db") not in process_arguments()


@pytest.mark.slow
def test_sweep_with_a_password_leaks_it_nowhere(
    basic_auth_server, tmp_path: Path, sweep_data_root: Path
) -> None:
    uri, password, root = basic_auth_server
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths
    env = clean_env(
        MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password, RAY_TMPDIR=str(ray_tmp)
    )
    storage = tmp_path / "results"
    one_epoch = [*[t for t in TINY_SWEEP if not t.startswith("optim.epochs=")], "optim.epochs=1"]
    where = [f"--tracking-uri={uri}", f"--storage={storage}", f"--data-root={sweep_data_root}"]
    seen_in_argv = []
    try:
        with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
            launcher = subprocess.Popen(
                [*LAUNCH, "smoke", *one_epoch, "--limit=1", "--experiment=secret", *where],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
            )
        while launcher.poll() is None:  # every process's arguments, while the sweep runs
            if password in process_arguments():
                seen_in_argv.append(time.monotonic())
            time.sleep(0.5)
        output = (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
        assert launcher.returncode == 0, output[-3000:]
        assert not seen_in_argv
        assert password not in output
        leaks = [
            str(path)
            for folder in (storage, ray_tmp, root / "artifacts")
            for path in folder.rglob("*")
            if path.is_file() and not path.is_symlink() and password.encode() in path.read_bytes()
        ]
        assert leaks == []
        assert password.encode() not in (root / "server.log").read_bytes()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        "admin",
        password,
    )
    try:
        client = MlflowClient(uri)
        (run,) = runs_of(client, "secret")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert run.info.status == "FINISHED"  # the trial logged in with the inherited password
    recorded = json.dumps([run.data.params, run.data.tags])
    assert password not in recorded


# Cluster and images, offline.


def test_cluster_uses_ray_tokens_and_keeps_the_shared_folder_closed() -> None:
    config = yaml.safe_load((REPO / "sweeps" / "cluster.yaml").read_text())
    options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    assert "RAY_AUTH_TOKEN_PATH=/mnt/shared/" in options
    assert "--env-file /mnt/shared/.iterconv/mlflow.env" in options
    assert "MLFLOW_TRACKING_PASSWORD=" not in options  # the secret lives in a 0600 file
    commands = "\n".join(
        config["initialization_commands"]
        + config["head_start_ray_commands"]
        + config["worker_start_ray_commands"]
    )
    assert not re.search(r"chmod\s+(0?[0-7]{2}[2367]|[ao]?\+w|1777)", commands)
    assert "chmod 0750 /mnt/shared" in commands and "umask 077" in commands
    assert "MLFLOW_BASIC_AUTH=true" in commands  # the head's tracking server asks for it


def final_user(dockerfile: Path) -> str:
    """Return the user a Dockerfile's image runs as (root when no USER is given)."""
    users = [
        line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")
    ]
    return users[-1] if users else "root"


def test_images_run_as_an_unprivileged_user() -> None:
    for name in ("Dockerfile", "mlflow.Dockerfile"):
        assert final_user(REPO / "docker" / name) not in ("root", "0"), name
    assert "mlflow[auth]" in (REPO / "docker" / "mlflow.Dockerfile").read_text()


def test_compose_passes_the_bind_address_and_a_separate_auth_store() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    mlflow = compose["services"]["mlflow"]
    environment = mlflow["environment"]
    assert environment["MLFLOW_BIND_ADDRESS"] == "${MLFLOW_BIND_ADDRESS:-127.0.0.1}"
    assert environment["MLFLOW_AUTH_DATABASE_URI"].startswith("sqlite:////mlflow-auth/")
    assert "mlflow-auth:/mlflow-auth" in mlflow["volumes"]
    assert "--backend-store-uri" not in (REPO / "docker" / "mlflow-entrypoint.sh").read_text()
