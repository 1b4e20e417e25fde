"""The sweep launcher: a named grid on a Ray cluster, one MLflow run per trial (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import TrialConfig
from sweeps.grids import GRIDS, trial_configs
from sweeps.resources import DEFAULT_GPU_SHARE, Resources, format_dry_run, parse_gpu_share
from sweeps.tracking_server import (
    TrackingUnreachableError,
    check_reachable,
    is_http_uri,
    tracking_server,
)

EXIT_USAGE = 2  # bad input: nothing was started
EXIT_UNFINISHED = 1  # the sweep ran but some trials failed or were interrupted
# Credentials for a tracking server with basic auth (docker/compose.yaml), passed to trials.
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

log = logging.getLogger("iterconv.sweep")


class UsageError(ValueError):
    """Bad command-line input, reported before anything starts."""


def grid_summary_line(name: str) -> str:
    """Return the first line of a grid's docstring."""
    return (GRIDS[name].__doc__ or "").strip().splitlines()[0]


def gpu_share_argument(text: str) -> dict[int, float]:
    """Return the --gpu-share table, with argparse's error message on bad input."""
    try:
        return parse_gpu_share(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python sweeps/launch.py`."""
    grids = "\n".join(
        f"  {name:11s} {(f.__doc__ or '').splitlines()[0]}" for name, f in GRIDS.items()
    )
    parser = argparse.ArgumentParser(
        prog="sweeps/launch.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a named grid of trials with Ray Tune; log each trial to MLflow.",
        epilog=f"grids:\n{grids}\n\nenvironment: ITERCONV_STORAGE, ITERCONV_TRACKING_URI, "
        "ITERCONV_DATA_ROOT, ITERCONV_ACCELERATOR and ITERCONV_RAY_ADDRESS (or RAY_ADDRESS) "
        "give the defaults of --storage, --tracking-uri, --data-root, --accelerator and "
        "--address (sweeps/cluster.yaml sets them on every node); MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD are passed to the trials for a server with basic auth.",
    )
    parser.add_argument("grid", help="name of the grid (listed below)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="set a config key in every trial, e.g. optim.epochs=10 (see pipeline/config.py)",
    )
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--address",
        default=os.environ.get("ITERCONV_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join: 'auto' on a cluster node, or host:port; default: start a "
        "local Ray on this machine with all its cores",
    )
    cluster.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        metavar="N",
        help="at most N trials at once (default: as many as the resources allow)",
    )
    cluster.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        metavar="C",
        help="CPU cores per trial; also its torch threads (default: 1)",
    )
    cluster.add_argument(
        "--gpu-share",
        type=gpu_share_argument,
        default=dict(DEFAULT_GPU_SHARE),
        metavar="W=S,...",
        help="GPU fraction per trial by width, so small models share a GPU (default: "
        + ",".join(f"{w}={s:g}" for w, s in DEFAULT_GPU_SHARE.items())
        + ")",
    )
    cluster.add_argument(
        "--accelerator",
        choices=("auto", "gpu", "cpu"),
        default=os.environ.get("ITERCONV_ACCELERATOR", "auto"),
        help="'auto': GPUs if the cluster has any when the sweep starts; 'gpu' on an "
        "autoscaling cluster whose GPU workers are not up yet (default: auto)",
    )
    cluster.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="hand a trial's checkpoint to Tune (copy it to storage) at most every S seconds; "
        "a retry resumes from the last one (default: 60)",
    )
    cluster.add_argument(
        "--max-failures",
        type=int,
        default=3,
        metavar="K",
        help="retry a failed trial up to K times from its last checkpoint (default: 3)",
    )
    storage = parser.add_argument_group("storage and tracking")
    storage.add_argument(
        "--storage",
        default=os.environ.get("ITERCONV_STORAGE", "ray_results"),
        metavar="PATH_OR_URI",
        help="Tune results and checkpoints go to STORAGE/GRID; shared storage (NFS path or "
        "s3://...) on a multi-node cluster (default: ./ray_results)",
    )
    storage.add_argument(
        "--tracking-uri",
        default=os.environ.get("ITERCONV_TRACKING_URI"),
        metavar="URI",
        help="http(s)://... : an MLflow server that is already running (checked at start); "
        "any other URI (sqlite:///x.db, postgresql://...): a backend store that the launcher "
        "serves with its own `mlflow server` while the sweep runs (default: "
        "sqlite:///STORAGE/mlflow.db)",
    )
    storage.add_argument(
        "--experiment",
        default=None,
        metavar="NAME",
        help="MLflow experiment of the runs (default: the grid's name)",
    )
    storage.add_argument(
        "--mlflow-host",
        default=None,
        metavar="HOST",
        help="interface of the launcher's own mlflow server (default: 127.0.0.1 for a local "
        "Ray, this node's IP with --address so that other nodes can log)",
    )
    storage.add_argument(
        "--data-root",
        default=os.environ.get("ITERCONV_DATA_ROOT", "data"),
        metavar="DIR",
        help="dataset directory given to every trial as data.root (made absolute; shared "
        "storage on a multi-node cluster) (default: ./data)",
    )
    storage.add_argument(
        "--download",
        action="store_true",
        help="download missing torchvision datasets into --data-root before the sweep",
    )
    selection = parser.add_argument_group("selection and control")
    selection.add_argument(
        "--seeds", type=int, default=None, metavar="N", help="seeds 0..N-1 (default: the grid's)"
    )
    selection.add_argument(
        "--limit", type=int, default=None, metavar="N", help="run only the grid's first N trials"
    )
    selection.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped sweep in STORAGE/GRID: finished trials are kept, the rest "
        "(also errored ones) resume from their checkpoints",
    )
    selection.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial count by dataset and variant and the estimated GPU-hours; "
        "start nothing",
    )
    selection.add_argument(
        "-v", "--verbose", action="store_true", help="show the trials' own log lines"
    )
    return parser


def sweep_configs(args: argparse.Namespace) -> list[TrialConfig]:
    """Return the trials of the command line: grid, launcher settings, overrides, limit."""
    if args.grid not in GRIDS:
        raise UsageError(f"unknown grid {args.grid!r}: known grids are {', '.join(GRIDS)}")
    for name in ("seeds", "limit", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}={value}: must be an integer >= 1")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures={args.max_failures}: must be an integer >= 0")
    if not args.checkpoint_interval >= 0:
        raise UsageError(f"--checkpoint-interval={args.checkpoint_interval}: must be >= 0")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial={args.cpus_per_trial}: must be > 0")
    settings: dict[str, Any] = {
        "data.root": str(Path(args.data_root).expanduser().resolve()),
        "run.threads": max(1, math.ceil(args.cpus_per_trial)),
    }
    if args.download:
        settings["data.download"] = True
    configs = trial_configs(args.grid, args.seeds, settings, args.overrides)
    return configs[: args.limit]


def experiment_path(storage: str, grid: str) -> str:
    """Return where Tune keeps this grid's sweep: STORAGE/GRID (a path or a URI)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{grid}"
    return str(Path(storage).expanduser().resolve() / grid)


def default_backend_store(storage: str) -> str:
    """Return the SQLite store beside a local storage path (else in the working directory)."""
    directory = Path.cwd() if "://" in storage else Path(storage).expanduser().resolve()
    return f"sqlite:///{directory / 'mlflow.db'}"


def prepare_data(configs: Sequence[TrialConfig]) -> None:
    """Load (download, generate) every dataset of the sweep once, before trials race to it."""
    from pipeline.data import load_dataset

    seen = set()
    for config in configs:
        d = config.data
        for split, images in (("train", d.clutter_train_images), ("test", d.clutter_test_images)):
            key = (d.dataset, d.root, split, images if d.dataset.startswith("digit") else None)
            if key not in seen:
                seen.add(key)
                load_dataset(d.dataset, d.root, split, download=d.download, clutter_images=images)


@contextlib.contextmanager
def tracking(args: argparse.Namespace, host: str) -> Iterator[str]:
    """Yield the tracking URI of the sweep, serving a local store for its duration if needed."""
    uri = args.tracking_uri
    if uri is not None and is_http_uri(uri):
        yield uri
        print(f"browse the runs at {uri}", flush=True)
        return
    backend = uri or default_backend_store(args.storage)
    root = Path(args.storage).expanduser().resolve() if "://" not in args.storage else Path.cwd()
    with tracking_server(backend, root / "mlartifacts", root / "mlflow-server.log", host) as server:
        print(f"MLflow: {server.uri} serving {backend}", flush=True)
        yield server.uri
    print(
        f"browse the runs: mlflow ui --backend-store-uri {backend} "
        f"--artifacts-destination {root / 'mlartifacts'}",
        flush=True,
    )


@contextlib.contextmanager
def ray_cluster(args: argparse.Namespace) -> Iterator[None]:
    """Join the cluster at --address, or start a local Ray with this machine's cores."""
    import ray

    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": args.verbose,
        "logging_level": logging.INFO if args.verbose else logging.WARNING,
    }
    if args.address:
        forwarded = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        runtime_env = {"env_vars": forwarded} if forwarded else None
        ray.init(address=args.address, runtime_env=runtime_env, **common)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), **common)
    try:
        yield
    finally:
        ray.shutdown()


def run_sweep(args: argparse.Namespace, configs: Sequence[TrialConfig], path: str) -> int:
    """Run (or resume) the sweep on Ray; return the exit status (0: every trial finished)."""
    # Per-epoch checkpoints of many short trials make Tune warn about state snapshots.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    from pipeline.tracking import close_unfinished_runs, ensure_experiment
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

    host = args.mlflow_host or ("127.0.0.1" if not args.address else ray.util.get_node_ip_address())
    with tracking(args, host) as uri, ray_cluster(args):
        from mlflow import MlflowClient

        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        use_gpus = args.accelerator == "gpu" or (args.accelerator == "auto" and has_gpus)
        resources = Resources(args.gpu_share, args.cpus_per_trial, use_gpus)
        trainable = make_trainable(SweepContext(uri, args.checkpoint_interval), resources)
        device = "GPUs" if use_gpus else "CPUs"
        if args.resume:
            # Grid, overrides and experiment are those stored with the sweep.
            print(f"resuming the sweep in {path} on {device}", flush=True)
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            experiment = args.experiment or args.grid
            ensure_experiment(MlflowClient(uri), experiment)
            print(f"sweep {args.grid}: {len(configs)} trials on {device}, in {path}", flush=True)
            storage, name = path.rsplit("/", 1)
            trials = [c.to_flat_dict() for c in configs]
            tuner = tune.Tuner(
                trainable,
                param_space={
                    TRIAL_KEY: tune.grid_search(trials),
                    GRID_KEY: args.grid,
                    EXPERIMENT_KEY: experiment,
                },
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=args.max_concurrent,
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
                    callbacks=[ProgressLines()],
                ),
            )
        if not args.verbose:
            # Tune's new console output prints its banner and tables even at verbose=0; the
            # classic reporter honours it, and ProgressLines prints one line per trial event.
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        results = tuner.fit()
        trial_ids = [trial_id_of(r.path) for r in results]
        experiment = (
            (results[0].config or {}).get(EXPERIMENT_KEY, args.grid) if len(results) else args.grid
        )
        finished = sum(1 for r in results if r.error is None and "final_test_error" in r.metrics)
        closed = close_unfinished_runs(uri, experiment, trial_ids)
    total = len(results)
    print(f"sweep {args.grid}: {finished} of {total} trials finished; results in {path}")
    if finished < total:
        print(
            f"{total - finished} trials failed or were interrupted ({len(closed)} runs marked "
            f"KILLED); continue with: python sweeps/launch.py {args.grid} --resume "
            f"--storage {args.storage}",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check it, and run, resume or dry-run the sweep."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may follow options
    try:
        configs = sweep_configs(args)
        resources = Resources(args.gpu_share, args.cpus_per_trial, use_gpus=True)
        if args.dry_run:
            print(format_dry_run(args.grid, configs, resources))
            return 0
        path = experiment_path(args.storage, args.grid)
        check_sweep_path(path, args.resume)
        if args.tracking_uri is not None and is_http_uri(args.tracking_uri):
            check_reachable(args.tracking_uri)
        if not args.resume:
            prepare_data(configs)
    except (ValueError, TrackingUnreachableError, FileNotFoundError) as error:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {error}\n")
    return run_sweep(args, configs, path)


def check_sweep_path(path: str, resume: bool) -> None:
    """Raise UsageError if --resume has nothing to resume, or a new sweep would overwrite one."""
    from ray.tune import Tuner

    exists = Tuner.can_restore(path)
    if resume and not exists:
        raise UsageError(f"--resume: no sweep to resume at {path}")
    if not resume and exists:
        raise UsageError(
            f"a sweep already exists at {path}: pass --resume to continue it, or choose "
            "another --storage"
        )
