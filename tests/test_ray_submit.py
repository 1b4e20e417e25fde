"""`ray up` / `ray submit` / `ray down` with sweeps/cluster-onprem.yaml, for real, over SSH.

The lab server is this machine: a real OpenSSH server on 127.0.0.1:22 with a key the test
generates. The server runs in its own PID and mount namespaces (util-linux `unshare`), so the
config's `ray stop` sees only the Ray it started, and the SSH user's home and Ray's /tmp/ray
are the test's own directories; nothing of the machine's other processes or files is touched.
The config is used as a user would: only the addresses, user, key, environment path and ports
are filled in.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import (
    REPO,
    TINY_SWEEP,
    daemon,
    processes_mentioning,
    require,
    require_root,
    system_env,
    wait_for,
)
from mlflow import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.tracking_server import free_port

CONFIG = REPO / "sweeps" / "cluster-onprem.yaml"
SSH_PORT = 22  # Ray's SSH runner has no port option: a lab server's sshd is on 22
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers root
Subsystem sftp internal-sftp
"""
# Inside the namespaces: the SSH user's home and Ray's /tmp/ray are the test's directories.
NAMESPACE_SETUP = """\
set -e
mount --bind {root}/passwd /etc/passwd
mkdir -p /tmp/ray
mount --bind {root}/ray-tmp /tmp/ray
exec /usr/sbin/sshd -D -e -f {root}/sshd_config
"""


def test_onprem_config_is_valid_for_the_cluster_launcher() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"
    aws = yaml.safe_load((REPO / "sweeps" / "cluster.yaml").read_text())
    env = " ".join(config["setup_commands"])
    for option in aws["docker"]["run_options"]:
        # The AWS image's launcher defaults, except the GPU request for autoscaled workers.
        if option.startswith("--env ITERCONV_") and "ACCELERATOR" not in option:
            assert f"export {option.removeprefix('--env ')}" in env, option
    assert config["worker_start_ray_commands"] == aws["worker_start_ray_commands"]


def ray_processes_in(namespace: str) -> list[str]:
    """Return the Ray daemons (raylet, gcs_server) running in a PID namespace."""
    found = []
    for pid in processes_mentioning("", pids=True):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
                continue
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("raylet", "gcs_server"):
            found.append(f"{pid} {name}")
    return found


def forget_cluster(name: str) -> None:
    """Remove what the cluster launcher keeps of a cluster on the local machine (in /tmp)."""
    for state in Path("/tmp/ray").glob(f"cluster-{name}.*"):
        state.unlink(missing_ok=True)
    for cached in Path(tempfile.gettempdir()).glob("ray-config-*"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(cached.read_text())["config"]["cluster_name"] == name:
                cached.unlink()


def port_is_free(port: int) -> bool:
    """Return True if nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Start sshd on 127.0.0.1 in its own namespaces; yield the key, user and home."""
    require("sshd", "ssh", "ssh-keygen", "rsync", "unshare", packages="openssh-server, rsync")
    require_root("an sshd that logs in as root in its own namespaces")
    if not port_is_free(SSH_PORT):
        pytest.skip(f"127.0.0.1:{SSH_PORT} is taken by another SSH server")
    root = Path(tempfile.mkdtemp(prefix="sshd", dir="/tmp"))
    home, ray_tmp = root / "home", root / "ray-tmp"
    home.mkdir(mode=0o700)
    ray_tmp.mkdir()
    (home / ".bashrc").write_text("# the SSH user's own shell start-up\n")
    key = root / "id_ed25519"
    for path, kind in ((key, "user"), (root / "host_key", "host")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"iterconv-test-{kind}",
             "-f", str(path)],
            check=True,
        )  # fmt: skip
    (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
    passwd = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[5] = str(home)
        passwd.append(":".join(fields))
    (root / "passwd").write_text("\n".join(passwd) + "\n")
    (root / "sshd_config").write_text(SSHD_CONFIG.format(port=SSH_PORT, root=root))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    setup = NAMESPACE_SETUP.format(root=root)
    command = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", setup]
    try:
        with daemon(command, tmp_path / "sshd.log"):
            wait_for(lambda: not port_is_free(SSH_PORT), "sshd on 127.0.0.1", 30)
            own = os.readlink("/proc/self/ns/pid")
            mentioning = processes_mentioning(f"-f {root}/sshd_config", pids=True)
            (sshd,) = [pid for pid in mentioning if os.readlink(f"/proc/{pid}/ns/pid") != own]
            yield {
                "key": str(key),
                "user": "root",
                "home": str(home),
                "root": str(root),
                "pid_namespace": os.readlink(f"/proc/{sshd}/ns/pid"),
            }
    finally:
        # Stopping sshd, the namespace's first process, ended every process in it.
        shutil.rmtree(root, ignore_errors=True)


def lab_config(ssh: dict[str, str], storage: Path, data_root: Path) -> dict:
    """Return cluster-onprem.yaml filled in as a user would for a lab of one: this machine."""
    config = yaml.safe_load(CONFIG.read_text())
    config["cluster_name"] = f"iterconv-test-{secrets.token_hex(4)}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"].update(ssh_user=ssh["user"], ssh_private_key=ssh["key"])
    # Free ports: other Ray clusters may run on this machine.
    ports = {"6379": free_port(), "8076": free_port()}
    replacements = {
        "/opt/iterconv/.venv/bin": str(Path(sys.executable).parent),
        "/mnt/shared/ray_results": str(storage),
        "/mnt/shared/data": str(data_root),
        **{f"={old}": f"={new}" for old, new in ports.items()},
        **{f":{old}": f":{new}" for old, new in ports.items()},
    }

    def fill(command: str) -> str:
        for old, new in replacements.items():
            command = command.replace(old, new)
        return command

    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        config[key] = [fill(command) for command in config[key]]
    # This checkout, not whatever the environment has installed, runs on the "server".
    config["setup_commands"].append(f"echo 'export PYTHONPATH={REPO}' >> ~/.iterconv-env")
    return config


@pytest.mark.slow
def test_ray_up_submit_down_on_a_lab_server(
    ssh_server: dict[str, str], tmp_path: Path, sweep_data_root: Path
) -> None:
    storage = tmp_path / "results"
    config = lab_config(ssh_server, storage, sweep_data_root)
    path = tmp_path / "cluster-onprem.yaml"
    path.write_text(yaml.safe_dump(config))
    ray = str(Path(sys.executable).with_name("ray"))
    env = system_env()
    env.pop("PYTHONPATH")  # the local `ray` CLI needs nothing of the checkout

    def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [ray, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        (tmp_path / f"ray-{args[0]}.log").write_text(result.stdout + result.stderr)
        return result

    def explain(result: subprocess.CompletedProcess) -> str:
        return f"rc={result.returncode}\n{(result.stdout + result.stderr)[-4000:]}"

    try:
        up = ray_cli("up", "-y", "--no-config-cache", str(path), timeout=600)
        assert up.returncode == 0, explain(up)
        bashrc = Path(ssh_server["home"], ".bashrc").read_text()
        assert "source ~/.iterconv-env" in bashrc  # the config's setup ran on the server
        submitted = ray_cli(
            "submit",
            str(path),
            "sweeps/launch.py",
            "--",
            "smoke",
            "--limit=2",
            *TINY_SWEEP,
            "--mlflow-host=127.0.0.1",  # one server: keep MLflow on loopback
            timeout=900,
        )
        assert submitted.returncode == 0, explain(submitted)
        assert "sweep smoke: 2 of 2 trials finished" in submitted.stdout, explain(submitted)
    finally:
        down = ray_cli("down", "-y", str(path), timeout=300)
        forget_cluster(config["cluster_name"])
    assert down.returncode == 0, explain(down)
    # `ray down` stopped the server's Ray: no Ray process is left in the server's namespace.
    wait_for(
        lambda: not ray_processes_in(ssh_server["pid_namespace"]),
        "the lab server's Ray processes to stop",
        60,
    )
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert (storage / "smoke").is_dir()  # the sweep's state went to the configured storage
