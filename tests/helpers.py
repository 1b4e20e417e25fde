"""What the test modules share; fixtures are in conftest.py, and no test module imports another.

pytest puts tests/ on sys.path: `from helpers import write_cifar`. In here: the launcher and its
environments; waiting, daemons and skips of the system tests (SLURM, `ray submit` over SSH, the
MLflow UI in Chromium), which run the real programs from their Debian packages (`.ci/run`
installs them with tests/system/install-deps.sh; where they are absent the test skips and says
so); tiny datasets in their real on-disk formats; tiny trial configs and real trials logged to
MLflow; small models and dense matrices of linear maps. MLflow and the trainer are imported
where they are used, so that conftest.py (which imports the dataset writers) stays quick.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from iterconv_faults import InjectedFault, fail_as_epoch_starts

from models import ResNetConfig, build_model, converge_power_iteration
from pipeline.config import TrialConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent
INSTALL = "tests/system/install-deps.sh"


# The launcher (sweeps/launch.py) in a subprocess.

LAUNCH = [sys.executable, str(REPO / "sweeps" / "launch.py")]
# Launcher overrides of a smoke trial small enough for the tests of the plumbing, not of the
# figures.
TINY_SWEEP = [
    "optim.epochs=2",
    "data.clutter_train_images=512",
    "data.clutter_test_images=128",
    "data.index_examples=64",
    "model.blocks_per_stage=2",
    "run.extra_evaluations=2",
]


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment of a launcher subprocess: no inherited sweep defaults.

    PYTHONPATH is left as it is: the project comes from what is installed (as after `ray
    submit`, where only launch.py travels). system_env() also puts this checkout on it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITERCONV_", "RAY_ADDRESS"))}
    return {**env, **extra}


def system_env(**extra: str) -> dict[str, str]:
    """Return clean_env() with this checkout first on PYTHONPATH: for the system tests.

    The launcher and Ray's workers (under SLURM, on a lab server over SSH) import this checkout,
    whatever is installed.
    """
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def launch(*args: str, env: dict[str, str] | None = None, timeout: float = 420):
    """Run `python sweeps/launch.py ARGS` to completion; return the CompletedProcess."""
    return subprocess.run(
        [*LAUNCH, *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def explain(result: subprocess.CompletedProcess) -> str:
    """Return the end of a launcher's output, for assertion messages."""
    out, err = result.stdout[-3000:], result.stderr[-3000:]
    return f"rc={result.returncode}\nstdout:\n{out}\nstderr:\n{err}"


def runs_of(client: MlflowClient, experiment: str) -> list:
    """Return every run of an experiment (none if it does not exist)."""
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@contextlib.contextmanager
def ray_node(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run `ray start ... --block` until the with-block ends; stop exactly that node."""
    ray = str(Path(sys.executable).with_name("ray"))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [ray, "start", *args, "--block"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield process
    finally:
        # SIGTERM to the blocking `ray start`: it drains and stops the processes it started.
        process.terminate()
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# Processes: waiting for them, daemons, and the programs the system tests need.


def wait_for(check, what: str, timeout: float = 300, interval: float = 0.5):
    """Return check()'s first truthy value, polling; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def require(*programs: str, packages: str) -> None:
    """Skip the test, naming the Debian packages, unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: install Debian {packages} ({INSTALL})")


def require_root(what: str) -> None:
    """Skip the test unless it runs as root (the daemons it starts need it)."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root here (CI runs as root)")


@contextlib.contextmanager
def daemon(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator:
    """Run a foreground daemon until the with-block ends; then stop it (its group) for sure."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        time.sleep(0.3)
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{log.read_text()}")
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children: TERM, then KILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def processes_mentioning(text: str, pids: bool = False) -> list:
    """Return the command lines (or pids) of live processes that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in line:
                found.append(int(entry.name) if pids else line.strip())
    return found


def python_bin() -> Path:
    """Return the folder of this Python's scripts (ray, mlflow)."""
    return Path(sys.executable).parent


# Tiny datasets in their real on-disk formats: CIFAR pickles and MNIST idx.gz files. Each class
# has its own mean intensity (and, for CIFAR, colour), so a small network learns them in a few
# steps; pixel noise keeps images distinct.

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


# Tiny trials, and real trials logged to MLflow with pipeline.tracking.

CIFAR_TINY_EXTRA = 3  # extra evaluations in the curves of cifar_tiny_config (small: quick)
CIFAR_TINY_BLOCKS = 3  # residual blocks per stage of cifar_tiny_config


def cifar_tiny_config(data_root: Path, **updates: object) -> TrialConfig:
    """Return a CPU-second CIFAR-10 trial config (width 4, 3 blocks, 2 epochs), updates applied."""
    base = {
        "data.dataset": "cifar10",
        "data.root": str(data_root),
        "data.clutter_train_images": 200,
        "data.clutter_test_images": 100,
        "model.width": 4,
        "model.blocks_per_stage": CIFAR_TINY_BLOCKS,
        "optim.epochs": 2,
        "optim.batch_size": 50,
        "optim.warmup_epochs": 0,
        "run.extra_evaluations": CIFAR_TINY_EXTRA,
        "run.device": "cpu",
        "run.threads": 1,
    }
    return TrialConfig().with_updates({**base, **updates})


def clutter_tiny_config(root: Path, **updates: object) -> TrialConfig:
    """Return a Digitclutter-3 trial that trains in seconds on CPU (width 4, 2 blocks, 3 epochs)."""
    return TrialConfig.from_dict(
        {
            "data.dataset": "digitclutter-3",
            "data.root": str(root),
            "data.clutter_train_images": 256,
            "data.clutter_test_images": 128,
            "data.index_examples": 64,
            "model.width": 4,
            "model.blocks_per_stage": 2,
            "optim.epochs": 3,
            "optim.batch_size": 64,
            "run.extra_evaluations": 2,
            "run.threads": 1,
            **updates,
        }
    )


def create_experiments(uri: str, names: list[str], artifacts: Path) -> None:
    """Create the experiments with artifacts under tmp (MLflow's default is ./mlruns)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for name in names:
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(artifacts / name).as_uri())


def log_trial(uri: str, grid: str, config: TrialConfig, trial_id: str, outcome: str) -> str:
    """Run a real trial and log it with pipeline.tracking; outcome finished, failed or running."""
    from pipeline.tracking import TrialRun
    from pipeline.train import run_trial

    run = TrialRun.open(uri, grid, trial_id, config, grid)
    if outcome == "running":
        return run.run_id
    undo = fail_as_epoch_starts(1) if outcome == "failed" else (lambda: None)
    try:
        result = run_trial(config, report=lambda metrics, _: run.log_epoch(metrics))
    except InjectedFault as error:
        run.fail(error)
        return run.run_id
    finally:
        undo()
    run.finish(result)
    return run.run_id


# Small models, batches and dense matrices.


def trained_statistics_model(block: str, blocks: int = 3, num_classes: int = 10):
    """Return a tiny ResNet with non-trivial BN running statistics and converged bounds."""
    torch.manual_seed(0)
    cfg = ResNetConfig(width=4, blocks_per_stage=blocks, block=block)
    model = build_model(cfg, num_classes=num_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    converge_power_iteration(model)
    return model


def labelled_batches(model, task, sizes=(24, 9), correct_fraction=0.75):
    """Return batches of smooth random images labelled mostly with the model's own answers."""
    # Labels agreeing with the unperturbed network put e_final well below chance, so the
    # perturbations move the error. Smooth images (2x2 noise, upsampled) vary the pooled
    # features far more than pixel noise, which averages out to one answer for every image.
    generator = torch.Generator().manual_seed(3)
    batches = []
    model.eval()
    for size in sizes:
        coarse = torch.randn(size, 3, 2, 2, generator=generator)
        x = F.interpolate(coarse, size=32, mode="bilinear")
        with torch.no_grad():
            logits = model(x)
        if task.multilabel:
            top = logits.topk(task.digits_per_image, dim=1).indices
            targets = torch.zeros(size, task.num_classes, dtype=torch.uint8).scatter_(1, top, 1)
            random = torch.rand(size, task.num_classes, generator=generator).topk(3).indices
            noise = torch.zeros_like(targets).scatter_(1, random, 1)
        else:
            targets = logits.argmax(dim=1)
            noise = torch.randint(0, task.num_classes, (size,), generator=generator)
        keep = torch.rand(size, generator=generator) < correct_fraction
        keep = keep.view(-1, *([1] * (targets.dim() - 1)))
        batches.append((x, torch.where(keep, targets, noise)))
    return batches


def dense_matrix(operator, channels: int, size: int, dtype=torch.float32) -> torch.Tensor:
    """Return the matrix of a linear map on channels x size x size feature maps."""
    n = channels * size * size
    basis = torch.eye(n, dtype=dtype).view(n, channels, size, size)
    return operator(basis).reshape(n, n).T


def bn_scale(bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Return an eval-mode BatchNorm's scale gamma / sqrt(var + eps), shaped [1, C, 1, 1]."""
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)


# Soft gradient coupling: gradients of any StagedNetwork (the project's ResNet, torchvision's).


def set_random_gradients(model: torch.nn.Module) -> None:
    """Give every parameter a seeded random gradient."""
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def block_gradients(model) -> dict[tuple[int, str], list[torch.Tensor]]:
    """Return clones of the gradient of each (stage, position), block by block."""
    return {
        (s, name): [block.get_parameter(name).grad.clone() for block in blocks]
        for s, blocks in enumerate(model.stage_blocks())
        for name in model.block_parameters()
    }
