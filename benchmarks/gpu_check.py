"""The GPU path, proven and measured by one command: `make gpu-check` (docs/gpu-check.md).

    python benchmarks/gpu_check.py [--out DIR] [--quick] [--budget SECONDS]

1. correctness: the tests marked `cuda` (tests/test_cuda.py), run with pytest;
2. throughput per width (N = 16, batch 128, CIFAR-shaped): images/s, peak memory and achieved
   TFLOP/s of each step mode (eager, torch.compile, CUDA graph), each checked against eager;
   the fastest that matches becomes the step mode of trials on CUDA;
3. sharing one GPU: 1, 2, 4, 8 (and 16) concurrent trial processes, with and without MPS;
4. packing prototype (benchmarks/pack.py): K networks as one grouped network vs K processes;
5. the real launcher: `sweeps/launch.py smoke` with fractional GPUs;
6. projection: paper_grid GPU-hours per strategy; the calibration file (pipeline/calibration.py).

Without CUDA it runs the same code in quick mode on the CPU (tiny sizes, seconds), says that no
GPU was found, and exits 0 when the CPU checks pass. Writes gpu_check.json, gpu_check.md and
calibration.json to --out and prints the table. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.pack import packed_rate, packing_matches_separate
from benchmarks.sharing import WorkerError, WorkerPool, WorkerSpec
from benchmarks.train import random_cifar
from models import ResNetConfig
from pipeline.calibration import CALIBRATION_ENV, CALIBRATION_FORMAT, STEP_MODES, calibration_path
from pipeline.config import TrialConfig
from pipeline.train import build_trial, train_epoch
from sweeps.grids import trial_configs
from sweeps.resources import Resources, gpu_hours
from vocabulary import IMAGE_SIZE

REPO = Path(__file__).resolve().parent.parent  # the checkout: its tests and launcher run here

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
LOSS_TOLERANCE = 0.05  # |loss - eager loss| per step, bf16 (cross-entropy of 10 classes ~ 2.3)
UPDATE_TOLERANCE = 0.25  # |theta_mode - theta_eager| / |theta_eager - theta_0| after the steps
MATCH_STEPS = 8


@dataclass
class Size:
    """The sizes of one run: full on a GPU, tiny in quick mode."""

    widths: tuple[int, ...]
    blocks: int
    batch_size: int
    images: int  # per timed epoch
    counts: tuple[int, ...]  # concurrent processes
    sharing_widths: tuple[int, ...]
    packs: tuple[int, ...]
    pack_widths: tuple[int, ...]
    window: float  # seconds of each concurrent measurement
    pack_steps: int


# The GPU run; --quick and every run without CUDA take the tiny one.
FULL_SIZE = Size(
    (8, 16, 32, 64), 16, 128, 4096, (1, 2, 4, 8, 16), (8, 16), (1, 4, 16), (8, 16), 3.0, 20
)
QUICK_SIZE = Size((8,), 2, 16, 64, (1, 2), (8,), (1, 2), (8,), 1.0, 3)


@dataclass
class Findings:
    """What the run found: one list of rows per section, failures, and the timing."""

    device: str
    gpu: str
    quick: bool
    started: float = field(default_factory=time.monotonic)
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, section: str, row: dict[str, Any]) -> None:
        """Append a row to a section."""
        self.sections.setdefault(section, []).append(row)

    def fail(self, message: str) -> None:
        """Record a failed check."""
        self.failures.append(message)
        print(f"FAILED: {message}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        """Return seconds since the start."""
        return time.monotonic() - self.started


def gpu_name(device: torch.device) -> str:
    """Return the GPU's name, or 'none (CPU)'."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)"


def peak_tflops(name: str) -> float | None:
    """Return the datasheet dense bf16 peak of a GPU, None if not in the table."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def training_flops_per_image(
    cfg: ResNetConfig, in_channels: int = 3, num_classes: int = 10
) -> float:
    """Return the model FLOPs of one training image: 3x the forward's convolutions and read-out.

    A multiply-add counts as 2 FLOPs; the backward pass costs twice the forward (inputs and
    weights); BN, ReLU and the power iteration are left out (they move memory, not FLOPs).
    """
    w, n, size = cfg.width, cfg.blocks_per_stage, IMAGE_SIZE
    forward = 2 * 9 * in_channels * w * size * size  # stem
    for s in range(3):
        c, hw = w * 2**s, (size // 2**s) ** 2
        forward += n * 2 * (2 * 9 * c * c * hw)  # two convolutions per block
        if s < 2:
            forward += 2 * 9 * c * 2 * c * (hw // 4)  # stride-2 transition
    forward += 2 * 4 * w * num_classes
    return 3.0 * forward


# --- 1. correctness ------------------------------------------------------------------------


def run_cuda_tests(findings: Findings, out: Path) -> None:
    """Run the tests marked cuda with pytest in a child process; one row per test."""
    junit = out / "cuda_tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "tests/test_cuda.py",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    (out / "cuda_tests.log").write_text(done.stdout + done.stderr)
    if not junit.exists():
        findings.fail(f"pytest of the cuda tests wrote no report (exit {done.returncode})")
        return
    cases = ET.parse(junit).getroot().iter("testcase")
    count = 0
    for case in cases:
        count += 1
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[kind]
                detail = (
                    (element.get("message") or "").splitlines()[0][:120]
                    if element.get("message")
                    else ""
                )
        name = case.get("name", "?")
        if outcome == "skipped" and findings.device == "cpu":
            detail = "skipped: no CUDA"
        findings.add(
            "correctness",
            {
                "test": name,
                "result": outcome,
                "detail": detail,
                "seconds": float(case.get("time", 0)),
            },
        )
        if outcome in ("FAILED", "ERROR") or (outcome == "skipped" and findings.device == "cuda"):
            findings.fail(f"cuda test {name}: {outcome} {detail}")
    if count == 0:
        findings.fail("no cuda tests were collected")
    print(f"correctness: {count} cuda tests in {time.perf_counter() - start:.0f} s", flush=True)


# --- 2. throughput per width and step mode -----------------------------------------------


def trial_config(width: int, size: Size, device: torch.device, epochs: int = 2) -> TrialConfig:
    """Return the benchmark trial: ordinary ResNet on CIFAR-format data."""
    return TrialConfig.from_dict(
        {
            "model.width": width,
            "model.blocks_per_stage": size.blocks,
            "optim.batch_size": size.batch_size,
            "optim.epochs": epochs,
            "optim.warmup_epochs": 0,
            "run.device": device.type,
        }
    )


def match_steps(trial, batches) -> tuple[list[float], torch.Tensor]:
    """Run the steps on fixed batches; return their losses and the final flat parameters."""
    losses = []
    for inputs, targets in batches:
        loss, _ = trial.step(inputs, targets)
        losses.append(float(loss))
    flat = torch.cat([p.detach().float().flatten() for p in trial.model.parameters()])
    return losses, flat


def measure_mode(
    mode: str, width: int, size: Size, device: torch.device, splits, reference
) -> dict[str, Any]:
    """Return images/s, peak memory and the agreement with eager of one step mode."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trial = build_trial(trial_config(width, size, device), device, splits, mode)
    initial = torch.cat([p.detach().float().flatten() for p in trial.model.parameters()])
    batches = list(_first_batches(trial, MATCH_STEPS))
    losses, final = match_steps(trial, batches)  # also the warm-up: compile, capture, autotune
    first_seconds = time.perf_counter() - start
    metrics = train_epoch(trial, 1)
    row: dict[str, Any] = {
        "images_per_second": metrics["images_per_second"],
        "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "setup_seconds": first_seconds,
        "losses": losses,
        "final": final,
        "initial": initial,
    }
    if reference is not None:
        ref_losses, ref_final, ref_initial = reference
        row["loss_difference"] = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
        moved = float((ref_final - ref_initial).norm())
        row["update_difference"] = float((final - ref_final).norm()) / max(moved, 1e-12)
        row["matches_eager"] = bool(
            row["loss_difference"] <= LOSS_TOLERANCE
            and row["update_difference"] <= UPDATE_TOLERANCE
            and all(math.isfinite(v) for v in losses)
        )
    return row


def _first_batches(trial, count: int) -> Iterator:
    """Yield the first `count` training batches (epoch 0; the same for every mode)."""
    trial.train_loader.set_epoch(0)
    for i, batch in enumerate(trial.train_loader):
        if i == count:
            return
        yield batch


def mode_skip_reason(mode: str, device: torch.device, quick: bool) -> str | None:
    """Return why a step mode is not measured here, None when it is."""
    if mode == "cuda_graph" and device.type != "cuda":
        return "skipped: no CUDA (CUDA graphs need a GPU)"
    if mode == "compile" and device.type != "cuda" and quick:
        return "skipped: CPU quick mode (compiling takes minutes on a CPU)"
    return None


def measure_throughput(findings: Findings, size: Size, device: torch.device, budget: float) -> str:
    """Measure every width x step mode; return the step mode chosen for CUDA."""
    flops_name = findings.gpu
    peak = peak_tflops(flops_name) if device.type == "cuda" else None
    speedups: dict[str, list[float]] = {mode: [] for mode in STEP_MODES}
    usable = {mode: True for mode in STEP_MODES}
    # A data set twice the timed epoch: MATCH_STEPS batches of epoch 0, then a full epoch 1.
    splits = random_cifar(max(size.images, size.batch_size * (MATCH_STEPS + 1)))
    for width in size.widths:
        cfg = ResNetConfig(width=width, blocks_per_stage=size.blocks)
        flops = training_flops_per_image(cfg)
        reference = None
        eager_rate = None
        for mode in STEP_MODES:
            base = {"width": width, "mode": mode, "gflop_per_image": flops / 1e9}
            reason = mode_skip_reason(mode, device, findings.quick)
            if reason is None and mode == "compile" and findings.elapsed() > budget:
                reason = "skipped: time budget of the run used up"
            if reason is not None:
                findings.add("throughput", {**base, "status": reason})
                usable[mode] = False
                continue
            try:
                row = measure_mode(mode, width, size, device, splits, reference)
            except Exception as error:  # a mode that cannot run here is a finding, not a crash
                if mode == "eager":
                    raise
                findings.add(
                    "throughput",
                    {**base, "status": f"error: {type(error).__name__}: {str(error)[:150]}"},
                )
                usable[mode] = False
                continue
            if mode == "eager":
                reference = (row["losses"], row["final"], row["initial"])
                eager_rate = row["images_per_second"]
                row["matches_eager"] = True
            matches = row["matches_eager"]
            usable[mode] = usable[mode] and matches
            speedups[mode].append(row["images_per_second"] / eager_rate)
            achieved = row["images_per_second"] * flops / 1e12
            findings.add(
                "throughput",
                {
                    **base,
                    "status": "ok" if matches else "does not match eager",
                    "images_per_second": row["images_per_second"],
                    "ratio_to_eager": row["images_per_second"] / eager_rate,
                    "peak_memory_mib": None
                    if row["peak_bytes"] is None
                    else row["peak_bytes"] / 2**20,
                    "tflops": achieved,
                    "percent_of_peak": None if peak is None else 100 * achieved / peak,
                    "setup_seconds": row["setup_seconds"],
                    "loss_difference": row.get("loss_difference", 0.0),
                    "update_difference": row.get("update_difference", 0.0),
                },
            )
            print(
                f"throughput: width {width} {mode}: {row['images_per_second']:.0f} img/s",
                flush=True,
            )
    candidates = [m for m in STEP_MODES if usable[m] and len(speedups[m]) == len(size.widths)]
    chosen = max(candidates, key=lambda m: math.prod(speedups[m]) ** (1 / len(speedups[m])))
    if peak is None and device.type == "cuda":
        findings.notes.append(
            f"{findings.gpu}: no datasheet peak in PEAK_BF16_TFLOPS; % of peak left out"
        )
    findings.notes.append(
        f"step mode chosen for CUDA: {chosen} (fastest geometric-mean speed-up over eager among "
        f"the modes that match eager at every width; candidates {candidates})"
    )
    return chosen


# --- 3. sharing one GPU, 4. packing ------------------------------------------------------


@contextlib.contextmanager
def mps_daemon(device: torch.device) -> Iterator[tuple[dict[str, str] | None, str]]:
    """Start an NVIDIA MPS control daemon in a private directory; yield (env, reason)."""
    binary = shutil.which("nvidia-cuda-mps-control")
    if device.type != "cuda":
        yield None, "skipped: no CUDA"
        return
    if binary is None:
        yield None, "skipped: nvidia-cuda-mps-control not on this machine"
        return
    directory = Path(tempfile.mkdtemp(prefix="iterconv-mps-"))
    env = {
        "CUDA_MPS_PIPE_DIRECTORY": str(directory / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(directory / "log"),
    }
    for path in env.values():
        Path(path).mkdir()
    full = {**os.environ, **env}
    started = subprocess.run([binary, "-d"], env=full, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        yield (
            None,
            "skipped: MPS daemon did not start: "
            + (started.stderr or started.stdout).strip()[:100],
        )
        return
    try:
        yield env, ""
    finally:
        subprocess.run(
            [binary], input="quit\n", env=full, capture_output=True, text=True, timeout=30
        )
        shutil.rmtree(directory, ignore_errors=True)


def measure_sharing(
    findings: Findings, size: Size, device: torch.device, step_mode: str, mps: bool, budget: float
) -> dict[tuple[int, int], float]:
    """Return aggregate images/s by (width, processes); add rows to the sharing section."""
    label = "with MPS" if mps else "without MPS"
    rates: dict[tuple[int, int], float] = {}
    context = mps_daemon(device) if mps else contextlib.nullcontext((None, ""))
    with context as (env, reason):
        if mps and env is None:
            for width in size.sharing_widths:
                findings.add("sharing", {"width": width, "mps": label, "status": reason})
            return rates
        if findings.elapsed() > budget:
            for width in size.sharing_widths:
                findings.add(
                    "sharing",
                    {
                        "width": width,
                        "mps": label,
                        "status": "skipped: time budget of the run used up",
                    },
                )
            return rates
        spec = WorkerSpec(device.type, size.blocks, size.batch_size, 4 * size.batch_size, step_mode)
        try:
            # Under MPS a client that cannot join the server waits: give up sooner.
            with WorkerPool(max(size.counts), spec, env, timeout=60 if mps else 120) as pool:
                extra = () if mps else tuple(set(size.pack_widths) - set(size.sharing_widths))
                for width in size.sharing_widths + extra:
                    single = None
                    for count in size.counts:
                        measured = pool.aggregate_rate(width, count, size.window)
                        rates[(width, count)] = measured["images_per_second"]
                        single = single or measured["images_per_second"]
                        if width in size.sharing_widths:
                            findings.add(
                                "sharing",
                                {
                                    "width": width,
                                    "mps": label,
                                    "processes": count,
                                    "status": "ok",
                                    "images_per_second": measured["images_per_second"],
                                    "per_process": measured["per_process"],
                                    "ratio_to_one": measured["images_per_second"] / single,
                                },
                            )
                        print(
                            f"sharing {label}: width {width} x {count}: "
                            f"{measured['images_per_second']:.0f} img/s",
                            flush=True,
                        )
        except WorkerError as error:
            if not mps:
                findings.fail(f"concurrent trial processes ({label}): {error}")
            findings.add(
                "sharing", {"width": "-", "mps": label, "status": f"error: {str(error)[:200]}"}
            )
    return rates


def measure_packing(
    findings: Findings,
    size: Size,
    device: torch.device,
    separate: dict[tuple[int, int], float],
    step_mode: str,
) -> dict[tuple[int, int], float]:
    """Return packed images/s by (width, K); compare with K separate processes."""
    rates = {}
    worst = max(packing_matches_separate(w, max(size.packs), 2, device) for w in size.pack_widths)
    if worst > 1e-4:
        findings.fail(f"packed network differs from separate ResNets by {worst:.2e}")
    mode = step_mode if step_mode != "compile" else "eager"  # compiling K networks: not here
    for width in size.pack_widths:
        for packs in size.packs:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            measured = packed_rate(
                width, packs, size.blocks, size.batch_size, device, size.pack_steps, mode
            )
            rates[(width, packs)] = measured["images_per_second"]
            processes = separate.get((width, packs))
            findings.add(
                "packing",
                {
                    "width": width,
                    "K": packs,
                    "mode": mode,
                    "packed_images_per_second": measured["images_per_second"],
                    "separate_images_per_second": processes,
                    "ratio": None if not processes else measured["images_per_second"] / processes,
                    "peak_memory_mib": None
                    if measured["peak_bytes"] is None
                    else measured["peak_bytes"] / 2**20,
                    "max_logit_difference": worst,
                },
            )
            print(
                f"packing: width {width} K={packs}: {measured['images_per_second']:.0f} img/s",
                flush=True,
            )
    return rates


# --- 5. the real launcher ------------------------------------------------------------------


def sample_utilisation(stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """Append (GPU utilisation %, memory used MiB) from nvidia-smi every second until stopped."""
    binary = shutil.which("nvidia-smi")
    while binary and not stop.wait(1.0):
        with contextlib.suppress(subprocess.SubprocessError, ValueError, OSError):
            line = subprocess.run(
                [
                    binary,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.splitlines()[0]
            utilisation, memory = (float(v) for v in line.split(","))
            samples.append((utilisation, memory))


def run_launcher(findings: Findings, device: torch.device, out: Path) -> None:
    """Run `sweeps/launch.py smoke` on the GPU with fractional shares; check every run."""
    if device.type != "cuda":
        findings.add(
            "launcher", {"status": "skipped: no CUDA (make demo runs the smoke sweep on CPUs)"}
        )
        return
    root = Path(tempfile.mkdtemp(prefix="iterconv-gpu-smoke-"))
    command = [
        sys.executable,
        "sweeps/launch.py",
        "smoke",
        "--storage",
        str(root / "ray_results"),
        "--data-root",
        str(root / "data"),
        "--accelerator",
        "gpu",
    ]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_utilisation, args=(stop, samples), daemon=True)
    sampler.start()
    start = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        returncode, output = "timeout", str(error.stdout or "") + str(error.stderr or "")
    stop.set()
    sampler.join(timeout=15)
    (out / "launcher.log").write_text(output)
    seconds = time.perf_counter() - start
    runs = smoke_runs(root / "ray_results" / "mlflow.db")
    finished = sum(1 for r in runs if r["status"] == "FINISHED")
    gpu_ids = sorted({i for r in runs for i in json.loads(r.get("ray_gpu_ids") or "[]")})
    shares = sorted(
        {json.loads(r["ray_resources"]).get("GPU", 0) for r in runs if r.get("ray_resources")}
    )
    row = {
        "status": "ok"
        if returncode == 0 and runs and finished == len(runs)
        else f"exit {returncode}",
        "runs": len(runs),
        "finished": finished,
        "gpu_ids": gpu_ids,
        "gpu_shares": shares,
        "seconds": seconds,
        "mean_utilisation": sum(u for u, _ in samples) / len(samples) if samples else None,
        "max_utilisation": max((u for u, _ in samples), default=None),
        "max_memory_mib": max((m for _, m in samples), default=None),
    }
    findings.add("launcher", row)
    if row["status"] != "ok" or not gpu_ids:
        findings.fail(f"launcher smoke on the GPU: {row} (log: {out / 'launcher.log'})")
    shutil.rmtree(root, ignore_errors=True)


def smoke_runs(database: Path) -> list[dict[str, str]]:
    """Return status and placement tags of every run in the smoke sweep's MLflow SQLite store."""
    if not database.exists():
        return []
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r LEFT JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key IN ('ray_gpu_ids', 'ray_resources')"
        ).fetchall()
    runs: dict[str, dict[str, str]] = {}
    for run_id, status, key, value in rows:
        runs.setdefault(run_id, {"status": status})
        if key:
            runs[run_id][key] = value
    return list(runs.values())


# --- 6. projection and calibration -----------------------------------------------------------


def strategy_rates(
    single: dict[int, float],
    shared: dict[tuple[int, int], float],
    mps: dict[tuple[int, int], float],
    packed: dict[tuple[int, int], float],
    size: Size,
) -> dict[str, tuple[dict[int, float], dict[int, float], str]]:
    """Return per strategy: per-trial images/s by width, GPU share by width, and a note."""
    one = {w: 1.0 for w in single}
    strategies = {"one trial per GPU": (dict(single), one, "measured per width")}

    def sharing(
        aggregates: dict[tuple[int, int], float],
    ) -> tuple[dict[int, float], dict[int, float], list[int]]:
        rates, shares, guessed = {}, {}, []
        for width, rate in single.items():
            share = Resources().share(width)
            count = round(1 / share)
            if (width, count) in aggregates:
                rates[width] = aggregates[(width, count)] / count
            else:  # not measured: assume sharing gains nothing at this width
                rates[width] = rate * share
                guessed.append(width)
            shares[width] = share
        return rates, shares, guessed

    for name, aggregates in (("shared (launcher default shares)", shared), ("shared + MPS", mps)):
        if aggregates:
            rates, shares, guessed = sharing(aggregates)
            note = "measured" + (
                f"; widths {guessed}: no gain from sharing assumed" if guessed else ""
            )
            strategies[name] = (rates, shares, note)
    big = max(size.packs)
    if any(k == big for _, k in packed):
        rates, shares, guessed = {}, {}, []
        for width, rate in single.items():
            if (width, big) in packed:
                rates[width], shares[width] = packed[(width, big)] / big, 1 / big
            else:
                rates[width], shares[width] = rate, 1.0
                guessed.append(width)
        note = "prototype, ordinary blocks only" + (
            f"; widths {guessed}: one trial per GPU" if guessed else ""
        )
        strategies[f"packed K={big}"] = (rates, shares, note)
    return strategies


def project(findings: Findings, strategies) -> None:
    """Add paper_grid GPU-hours per strategy to the projection section."""
    configs = trial_configs("paper_grid")
    for name, (rates, shares, note) in strategies.items():
        resources = Resources(gpu_share=shares, use_gpus=True)
        hours = sum(gpu_hours(c, resources, rates) for c in configs)
        findings.add(
            "projection",
            {"strategy": name, "gpu_hours": hours, "trials": len(configs), "note": note},
        )


def calibration_document(
    findings: Findings, step_mode: str, strategies, size: Size
) -> dict[str, Any]:
    """Return the calibration JSON: the launcher's strategy (default shares) and the step mode."""
    key = "shared (launcher default shares)"
    rates, shares, note = strategies.get(key, strategies["one trial per GPU"])
    return {
        "format": CALIBRATION_FORMAT,
        "device": findings.device,
        "quick": findings.quick,
        "gpu": findings.gpu,
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "git_commit": _git_commit(),
        "step_mode": step_mode,
        "blocks_per_stage": size.blocks,
        "batch_size": size.batch_size,
        "images_per_second": {str(w): r for w, r in rates.items()},
        "gpu_share": {str(w): s for w, s in shares.items()},
        "rates_note": note,
    }


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:  # no git here (the cluster image)
        return "unknown"
    return done.stdout.strip() or "unknown"


# --- the table -----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def markdown(findings: Findings, document: dict[str, Any]) -> str:
    """Return the findings as markdown: a header, then one table per section."""
    mode = "quick" if findings.quick else "full"
    result = "FAILED: " + "; ".join(findings.failures) if findings.failures else "all checks passed"
    lines = [
        "# make gpu-check",
        "",
        f"- device: {findings.device}, GPU: {findings.gpu}, mode: {mode}",
        f"- torch {torch.__version__}, commit {document['git_commit'][:10]}, "
        f"{document['measured_at']}, {findings.elapsed():.0f} s",
        f"- result: {result}",
    ]
    if findings.device != "cuda":
        lines.append(
            "- no GPU was found: the CPU ran the quick checks; every GPU row says why it was "
            "skipped, and no number here is a GPU number"
        )
    lines += [f"- {note}" for note in findings.notes]
    for section, rows in findings.sections.items():
        rows = [{k: v for k, v in row.items() if k not in ("losses",)} for row in rows]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        lines += [
            "",
            f"## {section}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the checks and measurements; write and print the report; 1 if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/gpu-check", help="directory of the report")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (always without CUDA)")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds before optional measurements are skipped",
    )
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget={args.budget}: must be > 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type != "cuda"
    findings = Findings(device.type, gpu_name(device), quick)
    if device.type != "cuda":
        print(
            "no GPU found: running the quick checks on the CPU (no GPU number is measured)",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK_SIZE if quick else FULL_SIZE
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(1)

    run_cuda_tests(findings, out)
    # The budget bounds the optional parts only: compiling (tens of seconds per width) and MPS.
    step_mode = measure_throughput(findings, size, device, args.budget * 0.4)
    single = {
        row["width"]: row["images_per_second"]
        for row in findings.sections["throughput"]
        if row["mode"] == step_mode and "images_per_second" in row
    }
    shared = measure_sharing(findings, size, device, step_mode, mps=False, budget=math.inf)
    packed = measure_packing(findings, size, device, shared, step_mode)
    run_launcher(findings, device, out)
    with_mps = measure_sharing(findings, size, device, step_mode, mps=True, budget=args.budget - 90)
    strategies = strategy_rates(single, shared, with_mps, packed, size)
    project(findings, strategies)
    if device.type != "cuda":
        findings.notes.append(
            "projection: from CPU quick rates of a tiny network; it exercises the code and "
            "estimates nothing"
        )
    document = calibration_document(findings, step_mode, strategies, size)
    (out / "calibration.json").write_text(json.dumps(document, indent=2) + "\n")
    if device.type == "cuda" and not quick and not findings.failures:
        target = calibration_path()
        target.write_text(json.dumps(document, indent=2) + "\n")
        findings.notes.append(
            f"calibration written to {target} (${CALIBRATION_ENV} chooses another file)"
        )
    else:
        findings.notes.append(
            "calibration: not installed (only a full GPU run without failures installs it); "
            f"see {out / 'calibration.json'}"
        )
    table = markdown(findings, document)
    (out / "gpu_check.md").write_text(table)
    (out / "gpu_check.json").write_text(
        json.dumps(
            {
                "device": findings.device,
                "gpu": findings.gpu,
                "quick": quick,
                "seconds": findings.elapsed(),
                "failures": findings.failures,
                "notes": findings.notes,
                "sections": _plain(findings.sections),
                "calibration": document,
            },
            indent=2,
        )
        + "\n"
    )
    print(table)
    return 1 if findings.failures else 0


def _plain(value: Any) -> Any:
    """Return value with tensors dropped (JSON only)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
