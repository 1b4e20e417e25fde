"""The sweep launcher: a named grid on a Ray cluster, one MLflow run per trial (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import TrialConfig
from sweeps.grid_file import GridFile, check_record, load_grid_file, recorded
from sweeps.grids import GRIDS, trial_configs
from sweeps.preflight import UsageError, preflight
from sweeps.progress import print_status
from sweeps.resources import DEFAULT_GPU_SHARE, format_dry_run, parse_gpu_share
from sweeps.sweep import experiment_path, run_sweep
from sweeps.tracking_server import TrackingUnreachableError, is_http_uri, split_credentials
from sweeps.tracking_store import DEFAULT_STORAGE

EXIT_USAGE = 2  # bad input: nothing was started


def _bounded(kind: Callable[[str], Any], least: float, strict: bool) -> Callable[[str], Any]:
    """Return an argparse type: `kind` of the text, > least (strict) or >= least."""
    relation = ">" if strict else ">="

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value > least if strict else value >= least):
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be {'an integer' if kind is int else 'a number'} {relation} "
                f"{least:g}"
            )
        return value

    return parse


positive_int = _bounded(int, 1, strict=False)
non_negative_int = _bounded(int, 0, strict=False)
positive_float = _bounded(float, 0, strict=True)
non_negative_float = _bounded(float, 0, strict=False)


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
        "and MLFLOW_TRACKING_PASSWORD log in to a server with basic auth: trials read them "
        "from their node's environment (a local Ray inherits the launcher's).",
    )
    parser.add_argument(
        "grid", nargs="?", help="name of the grid (listed below); or give --grid-file instead"
    )
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
        type=positive_int,
        default=None,
        metavar="N",
        help="at most N trials at once (default: as many as the resources allow)",
    )
    cluster.add_argument(
        "--cpus-per-trial",
        type=positive_float,
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
        type=non_negative_float,
        default=60.0,
        metavar="S",
        help="hand a trial's checkpoint to Tune (copy it to storage) at most every S seconds; "
        "a retry resumes from the last one (default: 60)",
    )
    cluster.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=3,
        metavar="K",
        help="retry a failed trial up to K times from its last checkpoint (default: 3)",
    )
    storage = parser.add_argument_group("storage and tracking")
    storage.add_argument(
        "--storage",
        default=os.environ.get("ITERCONV_STORAGE", DEFAULT_STORAGE),
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
        default="127.0.0.1",
        metavar="HOST",
        help="interface of the launcher's own mlflow server, which has no authentication: "
        "a non-loopback HOST also needs --expose-tracking-server-without-auth (default: "
        "127.0.0.1; on a multi-node cluster give --tracking-uri of a server with basic auth)",
    )
    storage.add_argument(
        "--expose-tracking-server-without-auth",
        action="store_true",
        help="let the launcher's mlflow server listen on a non-loopback --mlflow-host, "
        "where anyone on that network can read and change the runs",
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
        "--grid-file",
        default=None,
        metavar="FILE",
        help="a grid of your own instead of GRID: a YAML file of base values, axes and trials "
        "(docs/grid-files.md); its name is the grid's name in STORAGE/NAME and MLflow",
    )
    selection.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        metavar="N",
        help="seeds 0..N-1 (default: the grid's)",
    )
    selection.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="run only the grid's first N trials",
    )
    selection.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped sweep in STORAGE/GRID: finished trials are kept, the rest "
        "(also errored ones) resume from their checkpoints",
    )
    selection.add_argument(
        "--status",
        action="store_true",
        help="print the progress of the sweep in STORAGE/GRID (running or stopped) from its "
        "saved state: finished, running, failed, total, elapsed, ETA; touches nothing",
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


def chosen_grid(args: argparse.Namespace) -> GridFile | None:
    """Return the grid of --grid-file (and set args.grid to its name), or None for a GRID.

    Raise UsageError unless exactly one of GRID and --grid-file is given.
    """
    if args.grid is not None and "=" in args.grid:  # no GRID: the first key=value took its place
        args.overrides.insert(0, args.grid)
        args.grid = None
    if args.grid_file is None:
        if args.grid is None:
            raise UsageError(f"no grid: give GRID (one of {', '.join(GRIDS)}) or --grid-file FILE")
        return None
    if args.grid is not None:
        raise UsageError(f"GRID {args.grid!r} and --grid-file {args.grid_file}: give one of them")
    grid = load_grid_file(args.grid_file)
    args.grid = grid.name
    return grid


def sweep_configs(args: argparse.Namespace, grid: GridFile | None = None) -> list[TrialConfig]:
    """Return the trials of the command line: grid, launcher settings, overrides, limit."""
    settings: dict[str, Any] = {
        "data.root": str(Path(args.data_root).expanduser().resolve()),
        "run.threads": max(1, math.ceil(args.cpus_per_trial)),
    }
    if args.download:
        settings["data.download"] = True
    if grid is None:
        configs = trial_configs(args.grid, args.seeds, settings, args.overrides)
    else:
        configs = grid.configs(args.seeds, settings, args.overrides)
    return configs[: args.limit]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check it, and run, resume or dry-run the sweep."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may follow options
    try:
        take_credentials(args)
        grid = chosen_grid(args)
        configs = sweep_configs(args, grid)
        path = experiment_path(args.storage, args.grid)
        resources, calibration = preflight(args, configs, path)
        if args.dry_run:
            if grid is not None and grid.description:
                print(f"{args.grid_file}: {grid.description}")
            print(format_dry_run(args.grid, configs, resources, calibration))
            return 0
        if args.status:
            print_status(path)
            return 0
        if grid is not None and args.resume:
            check_record(grid, path)
    except (ValueError, TrackingUnreachableError, FileNotFoundError) as error:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {error}\n")
    try:
        with recorded(grid, path, args.resume):
            status = run_sweep(args, configs, path)
    except UsageError as error:  # found on the cluster, before the tracking store was made
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {error}\n")
    if status != 0 and grid is not None:
        # The command printed above names GRID; a grid file's sweep resumes from its file.
        print(
            f"this sweep's grid is a file: python sweeps/launch.py --grid-file "
            f"{args.grid_file} --resume --storage {args.storage}",
            file=sys.stderr,
        )
    return status


def take_credentials(args: argparse.Namespace) -> None:
    """Move user:password@ out of an http(s) --tracking-uri into this process's environment.

    MLflow reads them from MLFLOW_TRACKING_USERNAME/PASSWORD; the bare URI is what the trials
    get (it is stored with the sweep), so the password is in no file, log or argument.
    """
    uri = args.tracking_uri
    if uri is None or not is_http_uri(uri):
        return
    bare, username, password = split_credentials(uri)
    if username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = username
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    args.tracking_uri = bare
