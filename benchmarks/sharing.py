"""Concurrent trial processes on one device: a pool of workers, each training its own trial.

Used by `benchmarks/gpu_check.py` (sharing one GPU, with and without MPS) and
`benchmarks/pack.py` (K separate processes against one packed network). Every worker builds
the trial of a width once (`prepare`: model, optimiser, its device-resident random
CIFAR-format data, warm-up steps), then trains for a common wall-clock window (`run`); the
aggregate rate is the sum of the workers' images/s over that window.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WARMUP_STEPS = 6  # compile, capture and cuDNN autotuning happen here, outside the window
SYNC_EVERY = 4  # steps between device synchronisations while timing


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker trains: device, N, batch size, data size, step mode, CPU threads."""

    device: str = "cuda"
    blocks: int = 16
    batch_size: int = 128
    images: int = 1024
    step_mode: str = "eager"
    threads: int = 1


def _build(spec: WorkerSpec, width: int, seed: int):
    """Return a trial of this width on random CIFAR-format data, warmed up."""
    import torch

    from benchmarks.train import random_cifar
    from pipeline.config import TrialConfig
    from pipeline.train import build_trial

    device = torch.device(spec.device)
    config = TrialConfig.from_dict(
        {
            "model.width": width,
            "model.blocks_per_stage": spec.blocks,
            "optim.batch_size": spec.batch_size,
            "optim.epochs": 1,
            "optim.warmup_epochs": 0,
            "run.device": device.type,
            "run.seed": seed,
        }
    )
    trial = build_trial(config, device, random_cifar(spec.images, seed), spec.step_mode)
    batches = _cycle(trial)
    for _ in range(WARMUP_STEPS):
        trial.step(*next(batches))
    _synchronise(device)
    return trial, batches


def _cycle(trial):
    """Yield training batches forever, epoch after epoch."""
    while True:
        yield from trial.train_loader


def _synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_window(trial, batches, start_at: float, seconds: float) -> tuple[int, float]:
    """Train from wall-clock time start_at for about `seconds`; return (images, seconds)."""
    while time.time() < start_at:
        time.sleep(0.001)
    _synchronise(trial.device)
    start = time.perf_counter()
    images = 0
    while True:
        for _ in range(SYNC_EVERY):
            inputs, targets = next(batches)
            trial.step(inputs, targets)
            images += len(targets)
        _synchronise(trial.device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images, elapsed


def worker_main(connection, spec: WorkerSpec, seed: int) -> None:
    """Serve prepare / run / stop commands from the pool until told to stop."""
    try:
        import torch

        torch.set_num_threads(spec.threads)
        torch.backends.cudnn.benchmark = spec.device == "cuda"
        if spec.device == "cuda":
            torch.zeros(1, device="cuda")  # create the context now: under MPS, this joins it
        connection.send(("ready", os.getpid()))
        built: dict[int, Any] = {}
        while True:
            command, *arguments = connection.recv()
            if command == "stop":
                return
            if command == "prepare":
                (width,) = arguments
                if width not in built:
                    built[width] = _build(spec, width, seed)
                connection.send(("prepared", width))
            elif command == "run":
                width, start_at, seconds = arguments
                trial, batches = built[width]
                connection.send(("result", *_train_window(trial, batches, start_at, seconds)))
    except Exception:
        connection.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback."""


class WorkerPool:
    """`count` worker processes, each with its own CUDA context (or CPU threads)."""

    def __init__(
        self,
        count: int,
        spec: WorkerSpec,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self.connections = []
        self.processes = []
        saved = dict(os.environ)
        os.environ.update(env or {})  # spawned children inherit the environment at start
        try:
            for seed in range(count):
                parent, child = context.Pipe()
                process = context.Process(target=worker_main, args=(child, spec, seed), daemon=True)
                process.start()
                self.connections.append(parent)
                self.processes.append(process)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            self._gather(range(count), "ready")
        except WorkerError:
            self.close()  # nothing may linger on the device after a failed start
            raise

    def _gather(self, workers, expected: str) -> list[tuple]:
        answers = []
        deadline = time.monotonic() + self.timeout
        for i in workers:
            connection = self.connections[i]
            if not connection.poll(max(deadline - time.monotonic(), 0.0)):
                raise WorkerError(f"worker {i}: no answer within {self.timeout:.0f} s")
            answer = connection.recv()
            if answer[0] == "error":
                raise WorkerError(f"worker {i} failed:\n{answer[1]}")
            if answer[0] != expected:
                raise WorkerError(f"worker {i}: expected {expected!r}, got {answer[0]!r}")
            answers.append(answer)
        return answers

    def aggregate_rate(self, width: int, count: int, seconds: float) -> dict[str, float]:
        """Train `count` workers at once for `seconds`; return total and per-process images/s."""
        if count > len(self.connections):
            raise ValueError(f"count={count}: the pool has {len(self.connections)} workers")
        workers = range(count)
        for i in workers:
            self.connections[i].send(("prepare", width))
        self._gather(workers, "prepared")
        start_at = time.time() + 0.2  # every worker starts at the same wall-clock time
        for i in workers:
            self.connections[i].send(("run", width, start_at, seconds))
        rates = [images / elapsed for _, images, elapsed in self._gather(workers, "result")]
        return {"images_per_second": sum(rates), "per_process": sum(rates) / count}

    def close(self) -> None:
        """Stop every worker (and wait for it)."""
        for connection in self.connections:
            with contextlib.suppress(BrokenPipeError, OSError):
                connection.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
