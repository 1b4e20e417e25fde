"""A local `mlflow server` process for a sweep, and the reachability check of a remote one."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.tracking import server_problem

PR_SET_PDEATHSIG = 1  # Linux prctl: signal the server if the launcher dies
HEALTH_TIMEOUT_S = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class TrackingUnreachableError(ConnectionError):
    """The tracking server did not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_http_uri(uri: str) -> bool:
    """Return True for a tracking server URI (http or https)."""
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise TrackingUnreachableError unless the server at `uri` answers its /health check."""
    problem = server_problem(uri, timeout)
    if problem is not None:
        raise TrackingUnreachableError(
            f"tracking server {uri} is not reachable ({problem}); start it (docker/compose.yaml) "
            "or omit --tracking-uri to use a local one"
        )


@dataclass
class TrackingServer:
    """A running `mlflow server` child process."""

    process: subprocess.Popen
    uri: str  # http://host:port, what trials log to
    backend_store_uri: str  # where runs are stored (e.g. sqlite:///.../mlflow.db)
    log_path: Path  # the server's stdout and stderr

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and the workers it started (its own process group)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # uvicorn workers may outlive the CLI process by a moment: clear the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the launcher exits, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def mlflow_executable() -> str:
    """Return the `mlflow` command of this Python environment."""
    beside = Path(sys.executable).with_name("mlflow")
    found = str(beside) if beside.exists() else shutil.which("mlflow")
    if found is None:
        raise FileNotFoundError("the mlflow command is not installed in this environment")
    return found


def start_tracking_server(
    backend_store_uri: str,
    artifacts_destination: str | os.PathLike,
    log_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    timeout: float = 180.0,
) -> TrackingServer:
    """Start `mlflow server` serving artifacts; return once /health answers (or raise)."""
    port = port or free_port(host)
    uri = f"http://{host}:{port}"
    command = [
        mlflow_executable(),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts_destination),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if host not in LOOPBACK_HOSTS:
        # MLflow 3 answers 403 to a Host header outside localhost and the private ranges:
        # the trials of other nodes ask for this address by name.
        command += ["--allowed-hosts", f"{host},{host}:{port},localhost:{port},127.0.0.1:{port}"]
    # The job runner (huey consumers) is for MLflow's GenAI jobs: a dozen idle processes here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() ends its workers too
            preexec_fn=_die_with_parent,
        )
    server = TrackingServer(process, uri, backend_store_uri, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{tail}")
        try:
            check_reachable(uri, timeout=2.0)
            return server
        except TrackingUnreachableError:
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(
                    f"mlflow server at {uri} not healthy after {timeout} s"
                ) from None
            time.sleep(0.5)


@contextlib.contextmanager
def tracking_server(
    backend_store_uri: str,
    artifacts_destination: str | os.PathLike,
    log_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
):
    """Run an `mlflow server` for the duration of a with-block; yield the TrackingServer."""
    server = start_tracking_server(backend_store_uri, artifacts_destination, log_path, host, port)
    try:
        yield server
    finally:
        server.stop()
