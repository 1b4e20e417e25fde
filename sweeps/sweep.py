"""Running a checked sweep: tracking server, Ray cluster and Tune run (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Per-epoch checkpoints of many short trials make Tune warn about state snapshots; the
# variable is read when Tune is imported.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray
from mlflow import MlflowClient
from ray import tune

from pipeline.config import TrialConfig
from pipeline.tracking import close_unfinished_runs, ensure_experiment, experiment_url
from sweeps.preflight import check_cluster
from sweeps.progress import ProgressLine
from sweeps.resources import Resources
from sweeps.tracking_server import is_http_uri, mask_uri, tracking_server
from sweeps.tracking_store import default_backend_store
from sweeps.trainable import (
    EXPERIMENT_KEY,
    GRID_KEY,
    TRIAL_KEY,
    ProgressLines,
    SweepContext,
    make_trainable,
    trial_dirname,
    trial_id_of,
)

EXIT_UNFINISHED = 1  # the sweep ran but some trials failed or were interrupted
UI_PORT = 5000  # where `mlflow ui` listens by default


@dataclass(frozen=True)
class SweepSummary:
    """What a fitted sweep left: its trials finished of all, and its MLflow experiment."""

    finished: int
    total: int
    killed: int  # MLflow runs of unfinished trials, marked KILLED
    experiment_id: str


@contextlib.contextmanager
def tracking(args: argparse.Namespace, host: str) -> Iterator[str]:
    """Yield the tracking URI of the sweep, serving a local store for its duration if needed."""
    uri = args.tracking_uri
    if uri is not None and is_http_uri(uri):
        yield uri
        return
    backend = uri or default_backend_store(args.storage)
    root = Path(args.storage).expanduser().resolve() if "://" not in args.storage else Path.cwd()
    with tracking_server(
        backend,
        root / "mlartifacts",
        root / "mlflow-server.log",
        host,
        supervise=True,  # restarted on its address if it dies mid-sweep
        allow_network=args.expose_tracking_server_without_auth,
    ) as server:
        print(f"MLflow: {server.uri} serving {mask_uri(backend)}", flush=True)
        yield server.uri
    print(
        f"browse the runs: mlflow ui --backend-store-uri {mask_uri(backend)} "
        f"--artifacts-destination {root / 'mlartifacts'} (then open the link below on its "
        f"port, {UI_PORT})",
        flush=True,
    )


@contextlib.contextmanager
def ray_cluster(args: argparse.Namespace) -> Iterator[None]:
    """Join the cluster at --address, or start a local Ray with this machine's cores."""
    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": args.verbose,
        "logging_level": logging.INFO if args.verbose else logging.WARNING,
    }
    if args.address:
        # No runtime_env with MLFLOW_TRACKING_PASSWORD: Ray records it with the job. Trials
        # read the credentials from their node's environment (sweeps/cluster.yaml).
        ray.init(address=args.address, **common)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), **common)
    try:
        yield
    finally:
        ray.shutdown()


def run_sweep(args: argparse.Namespace, configs: Sequence[TrialConfig], path: str) -> int:
    """Run (or resume) the sweep on Ray; return the exit status (0: every trial finished)."""
    # Ray first: what only the cluster can tell is checked before the tracking store is made.
    with ray_cluster(args):
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        use_gpus = args.accelerator == "gpu" or (args.accelerator == "auto" and has_gpus)
        check_cluster(args, configs, use_gpus)
        with tracking(args, args.mlflow_host) as uri:
            resources = Resources(args.gpu_share, args.cpus_per_trial, use_gpus)
            trainable = make_trainable(SweepContext(uri, args.checkpoint_interval), resources)
            device = "GPUs" if use_gpus else "CPUs"
            tuner = build_tuner(args, configs, path, trainable, uri, device)
            if not args.verbose:
                # Tune's new console output prints its banner and tables even at verbose=0; the
                # classic reporter honours it, and ProgressLines prints one line per trial event.
                os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
            summary = summarise(tuner.fit(), args.grid, uri)  # the server still runs
    return print_summary(summary, args, uri, path)


def build_tuner(
    args: argparse.Namespace,
    configs: Sequence[TrialConfig],
    path: str,
    trainable: Callable[[dict], None],
    uri: str,
    device: str,
) -> tune.Tuner:
    """Return the Tuner of a new sweep at `path`, or with --resume of the stopped one there."""
    if args.resume:
        # Grid, overrides and experiment are those stored with the sweep.
        print(f"resuming the sweep in {path} on {device}", flush=True)
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    experiment = args.experiment or args.grid
    experiment_id = ensure_experiment(MlflowClient(uri), experiment)
    print(f"sweep {args.grid}: {len(configs)} trials on {device}, in {path}", flush=True)
    print(f"MLflow UI while it runs: {experiment_url(uri, experiment_id)}", flush=True)
    storage, name = path.rsplit("/", 1)
    trials = [c.to_flat_dict() for c in configs]
    return tune.Tuner(
        trainable,
        param_space={
            TRIAL_KEY: tune.grid_search(trials),
            GRID_KEY: args.grid,
            EXPERIMENT_KEY: experiment,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=args.max_concurrent,
            # A finished trial's worker process takes the next trial of the same resources: no
            # new process, no re-import of torch (benchmarks/actors.py). Every trial seeds and
            # builds all its state itself, so its numbers do not change.
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            log_to_file=True,
            verbose=2 if args.verbose else 0,
            callbacks=[ProgressLines(), ProgressLine()],
        ),
    )


def summarise(results: tune.ResultGrid, grid: str, uri: str) -> SweepSummary:
    """Count the finished trials and mark the MLflow runs of the others KILLED (server up)."""
    trial_ids = [trial_id_of(r.path) for r in results]
    # A resumed sweep's experiment is the one stored with it, not --experiment.
    experiment = (results[0].config or {}).get(EXPERIMENT_KEY, grid) if len(results) else grid
    finished = sum(1 for r in results if r.error is None and "final_test_error" in r.metrics)
    closed = close_unfinished_runs(uri, experiment, trial_ids)
    experiment_id = ensure_experiment(MlflowClient(uri), experiment)
    return SweepSummary(finished, len(results), len(closed), experiment_id)


def print_summary(summary: SweepSummary, args: argparse.Namespace, uri: str, path: str) -> int:
    """Print the UI link and how many trials finished; return the exit status."""
    # A local store's server has stopped: the link is for `mlflow ui` on its default port.
    ui = uri if is_http_uri(args.tracking_uri or "") else f"http://127.0.0.1:{UI_PORT}"
    print(f"MLflow UI: {experiment_url(ui, summary.experiment_id)}", flush=True)
    finished, total = summary.finished, summary.total
    print(f"sweep {args.grid}: {finished} of {total} trials finished; results in {path}")
    if finished < total:
        print(
            f"{total - finished} trials failed or were interrupted ({summary.killed} runs marked "
            f"KILLED); continue with: python sweeps/launch.py {args.grid} --resume "
            f"--storage {args.storage}",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return 0


def experiment_path(storage: str, grid: str) -> str:
    """Return where Tune keeps this grid's sweep: STORAGE/GRID (a path or a URI)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{grid}"
    return str(Path(storage).expanduser().resolve() / grid)
