"""sweeps/slurm/iterconv.sbatch on a real single-node SLURM (slurmctld, slurmd, munged).

The test writes a minimal slurm.conf into its temp dir (no cgroups: process tracking by
/proc, no task plugin), starts the three daemons on 127.0.0.1, submits the script with
`smoke --limit 2`, waits for the job and checks the MLflow runs it left in the shared storage.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
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

from sweeps.tracking_server import free_port

SLURM_CONF = """\
ClusterName=iterconv-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd on this machine; yield the env of SLURM's clients."""
    require("munged", "mungekey", "slurmctld", "slurmd", "sbatch", packages="slurm-wlm, munge")
    require_root("a SLURM controller with SlurmUser=root")
    # Short path: munge's socket path has a length limit.
    root = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))
    os.chmod(root, 0o700)
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    key = root / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=socket.gethostname().split(".")[0],
            ctld_port=free_port(),
            slurmd_port=free_port(),
            root=root,
            cpus=os.cpu_count(),
        )
    )

    def keep_logs_and_clean() -> None:
        # The daemons' logs go beside the test's other files, for a failure's post-mortem.
        for log in ("slurmctld.log", "slurmd.log"):
            if (root / log).exists():
                (tmp_path / log).write_bytes((root / log).read_bytes())
        shutil.rmtree(root, ignore_errors=True)

    request.addfinalizer(keep_logs_and_clean)  # also when the test fails or is interrupted
    env = system_env(SLURM_CONF=str(conf))
    munged = ["munged", "--foreground", "--force", f"--key-file={key}"]
    munged += [f"--socket={root}/munge.sock", f"--pid-file={root}/munged.pid"]
    munged += [f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"]
    with ExitStack() as stack:
        stack.enter_context(daemon(munged, tmp_path / "munged.out"))
        wait_for(lambda: (root / "munge.sock").exists(), "munged's socket", 30)
        stack.enter_context(daemon(["slurmctld", "-D", "-f", str(conf)], tmp_path / "ctld.out"))
        stack.enter_context(daemon(["slurmd", "-D", "-f", str(conf)], tmp_path / "slurmd.out"))

        def node_idle() -> bool:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            )
            return state.stdout.strip() == "idle"

        wait_for(node_idle, "the SLURM node to be idle", 60)
        try:
            yield env
        finally:
            # A job still running (a failed or interrupted test) ends before its daemons do.
            subprocess.run(["scancel", "--full", "--partition=test"], env=env, check=False)

            def queue_empty() -> bool:
                queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                return queue.returncode == 0 and not queue.stdout.strip()

            wait_for(queue_empty, "the SLURM queue to empty", 60)


@pytest.mark.slow
def test_sbatch_runs_the_smoke_sweep_on_ray(
    slurm: dict[str, str], tmp_path: Path, sweep_data_root: Path, request: pytest.FixtureRequest
) -> None:
    storage = tmp_path / "results"
    ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    env = {
        **slurm,
        "ITERCONV_PYTHON": sys.executable,
        "RAY_PORT": str(free_port()),
        "RAY_START_ARGS": f"--temp-dir={ray_temp}",
        # A private token: the job's Ray never mixes with another Ray on this machine.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    log = tmp_path / "job.log"
    request.addfinalizer(lambda: shutil.rmtree(ray_temp, ignore_errors=True))
    job = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            f"--output={log}",
            "sweeps/slurm/iterconv.sbatch",
            "smoke",
            *TINY_SWEEP,
            "--limit=2",
            f"--storage={storage}",
            f"--data-root={sweep_data_root}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = log.read_text() if log.exists() else ""
    assert job.returncode == 0, f"sbatch: {job.stderr}\njob log:\n{output[-4000:]}"
    assert "Ray head on" in output and "1 of 1 Ray nodes up" in output, output[-4000:]
    assert "sweep smoke: 2 of 2 trials finished" in output, output[-4000:]
    assert "launcher exited with 0" in output

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 1  # the job's one Ray node
    # The job's end stopped its Ray: nothing of that cluster is left running.
    wait_for(lambda: not processes_mentioning(ray_temp), f"the job's Ray ({ray_temp}) to stop", 60)
