"""A local `mlflow server` process for a sweep, and the reachability check of a remote one."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1  # Linux prctl: signal the server if the launcher dies
HEALTH_TIMEOUT_S = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SUPERVISE_INTERVAL_S = 1.0  # how often the launcher looks whether its server still runs
MASK = "***"


def mask_uri(uri: str) -> str:
    """Return `uri` with the password of its user info replaced by ***, for printing."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """Return (uri without user info, username, password) of an http(s) URI."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    unquote = urllib.parse.unquote
    password = None if parts.password is None else unquote(parts.password)
    return bare, unquote(parts.username or ""), password


def is_loopback(host: str) -> bool:
    """Return True for a host name or address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    bare, _, _ = split_credentials(uri)  # an error message must not carry the password
    problem = server_problem(bare, timeout)
    if problem is not None:
        raise TrackingUnreachableError(
            f"tracking server {mask_uri(uri)} is not reachable ({problem}); start it "
            "(docker/compose.yaml) or omit --tracking-uri to use a local one"
        )


@dataclass
class TrackingServer:
    """A running `mlflow server` child process, restarted on its address if it dies."""

    process: subprocess.Popen
    uri: str  # http://host:port, what trials log to
    backend_store_uri: str  # where runs are stored (e.g. sqlite:///.../mlflow.db)
    log_path: Path  # the server's stdout and stderr
    command: list[str] = field(default_factory=list)  # argv: no store URI (it may hold a password)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # holds the store URI
    restarts: int = 0  # times the supervisor brought the server back
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    def supervise(self, interval: float = SUPERVISE_INTERVAL_S) -> None:
        """Watch the server in a thread and restart it, same address and store, if it exits."""
        self._supervisor = threading.Thread(
            target=self._watch, args=(interval,), name="mlflow-server-supervisor", daemon=True
        )
        self._supervisor.start()

    def _watch(self, interval: float) -> None:
        """Restart the server whenever it exits unasked (the supervisor thread's loop)."""
        # This thread also starts the restarted servers: PR_SET_PDEATHSIG ties a child to the
        # thread that forked it, and this one lives until stop().
        while not self._stopping.wait(interval):
            if self.process.poll() is None:
                continue
            code = self.process.returncode
            _kill_group(self.process.pid)
            print(
                f"MLflow server {self.uri} exited ({code}); restarting it on the same address",
                file=sys.stderr,
                flush=True,
            )
            while not self._stopping.is_set():
                try:
                    self.process = _spawn(self.command, self.env, self.log_path)
                    _wait_healthy(self, timeout=120.0)
                    self.restarts += 1
                    print(f"MLflow server {self.uri} is back", file=sys.stderr, flush=True)
                    break
                except (RuntimeError, TimeoutError) as error:  # e.g. the port not yet free
                    print(f"restarting MLflow server failed: {error}", file=sys.stderr)
                    self._stopping.wait(2.0)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop supervising, then stop the server and the workers it started (its group)."""
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=150.0)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.process.pid)
                self.process.wait()
        # uvicorn workers may outlive the CLI process by a moment: clear the group.
        _kill_group(self.process.pid)


def _kill_group(pid: int) -> None:
    """SIGKILL a process group, if any of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


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


class OpenServiceError(ValueError):
    """A server without authentication was asked to listen beyond this machine."""


def refuse_open_server(host: str, allow_network: bool) -> None:
    """Raise OpenServiceError if the launcher's server would listen beyond loopback unasked."""
    # The server has no authentication: whoever reaches `host` could read and change the runs.
    if not is_loopback(host) and not allow_network:
        raise OpenServiceError(
            f"--mlflow-host={host}: the launcher's mlflow server has no authentication, so it "
            "listens on loopback only; add --expose-tracking-server-without-auth to open it to "
            "that network anyway, or use a server with basic auth (docker/compose.yaml) via "
            "--tracking-uri"
        )


def start_tracking_server(
    backend_store_uri: str,
    artifacts_destination: str | os.PathLike,
    log_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    timeout: float = 180.0,
    allow_network: bool = False,
) -> TrackingServer:
    """Start `mlflow server` serving artifacts; return once /health answers (or raise).

    The server has no authentication, so it listens only on a loopback address unless
    `allow_network` says the caller knowingly opens it to the network.
    """
    refuse_open_server(host, allow_network)
    port = port or free_port(host)
    uri = f"http://{host}:{port}"
    # The store URI goes through the environment: argv is visible to every local user (ps),
    # and a database URI may hold a password.
    command = [
        mlflow_executable(),
        "server",
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
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
    }
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = _spawn(command, env, log_path)
    server = TrackingServer(process, uri, backend_store_uri, log_path, command, env)
    try:
        _wait_healthy(server, timeout)
    except (RuntimeError, TimeoutError):
        server.stop()
        raise
    return server


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start the server process in its own process group, its output appended to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() ends its workers too
            preexec_fn=_die_with_parent,
        )


def _wait_healthy(server: TrackingServer, timeout: float) -> None:
    """Return once the server answers /health; raise if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            _kill_group(server.process.pid)
            raise RuntimeError(f"mlflow server exited with {server.process.returncode}:\n{tail}")
        try:
            check_reachable(server.uri, timeout=2.0)
            return
        except TrackingUnreachableError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mlflow server at {server.uri} not healthy after {timeout} s"
                ) from None
            time.sleep(0.5)


@contextlib.contextmanager
def tracking_server(
    backend_store_uri: str,
    artifacts_destination: str | os.PathLike,
    log_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    supervise: bool = False,
    allow_network: bool = False,
):
    """Run an `mlflow server` for the duration of a with-block; yield the TrackingServer."""
    server = start_tracking_server(
        backend_store_uri, artifacts_destination, log_path, host, port, allow_network=allow_network
    )
    if supervise:
        server.supervise()
    try:
        yield server
    finally:
        server.stop()


def server_problem(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """Return why the tracking server at `uri` fails its /health check, or None if it answers."""
    # MLflow's client retries a dead server for minutes; callers ask once, quickly, first.
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code  # it answered: e.g. 401 from a server with basic auth
    except (urllib.error.URLError, OSError, ValueError) as error:
        return str(getattr(error, "reason", error))
    return f"{url} answered HTTP {status}" if status >= 500 else None
