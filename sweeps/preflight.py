"""The checks before any trial: what would fail the sweep or every trial is refused first.

`preflight` runs them in the launcher before anything starts (docs/sweeps.md); `check_cluster`
runs once Ray is up, for what only the cluster can tell. Each refusal names the value and what
is allowed (docs/faults.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ray
from ray import tune

from pipeline.calibration import Calibration, load_calibration
from pipeline.config import TrialConfig
from pipeline.data import Dataset, balanced_subset, load_dataset
from sweeps.resources import Resources
from sweeps.tracking_server import check_reachable, is_http_uri, is_loopback, refuse_open_server
from sweeps.tracking_store import check_uri_form

# What a resumed sweep takes from its stored state, never from the command line.
STORED_SETTINGS = ("overrides", "seeds", "limit", "experiment")


class UsageError(ValueError):
    """Bad command-line input, reported before anything starts."""


def preflight(
    args: argparse.Namespace, configs: Sequence[TrialConfig], path: str
) -> tuple[Resources, Calibration | None]:
    """Raise if the sweep at `path` could not run; return the GPU requests and calibration.

    --dry-run and --status start nothing, so they skip what only a run needs: the sweep path,
    the tracking server and the datasets.
    """
    check_resume_settings(args)
    refuse_open_server(args.mlflow_host, args.expose_tracking_server_without_auth)
    if args.tracking_uri is not None:
        check_uri_form(args.tracking_uri)  # before Ray or `mlflow server` could trip on it
    resources = Resources(args.gpu_share, args.cpus_per_trial, use_gpus=True)
    calibration = load_calibration()  # a broken file would fail every trial on CUDA
    if args.dry_run or args.status:
        return resources, calibration
    check_sweep_path(path, args.resume)
    if args.tracking_uri is not None and is_http_uri(args.tracking_uri):
        check_reachable(args.tracking_uri)
    if not args.resume:  # a resumed sweep's datasets were prepared when it started
        prepare_data(configs)
    return resources, calibration


def check_resume_settings(args: argparse.Namespace) -> None:
    """Raise UsageError if --resume comes with a setting that the stored sweep keeps."""
    if not args.resume:
        return
    given = [name for name in STORED_SETTINGS if getattr(args, name)]
    if given:
        shown = "key=value overrides" if given[0] == "overrides" else f"--{given[0]}"
        raise UsageError(
            f"--resume with {shown}: a resumed sweep keeps its original grid, overrides, "
            "seeds, limit and experiment; drop them, or start a new sweep in another "
            "--storage"
        )


def check_sweep_path(path: str, resume: bool) -> None:
    """Raise UsageError if --resume has nothing to resume, or a new sweep would overwrite one."""
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise UsageError(f"--resume: no sweep to resume at {path}")
    if not resume and exists:
        raise UsageError(
            f"a sweep already exists at {path}: pass --resume to continue it, or choose "
            "another --storage"
        )


def prepare_data(configs: Sequence[TrialConfig]) -> None:
    """Load (download, generate) every dataset of the sweep once, before trials race to it.

    Also checks what only the data can tell: that data.train_size has a class-balanced subset
    and that optim.batch_size fits in the (sub-sampled) training split.
    """
    loaded: dict[tuple, Dataset] = {}
    for config in configs:
        d = config.data
        # Only a generated (Digitclutter, Pathfinder) split has a size of the config's.
        for split in ("train", "test"):
            key = (d.dataset, d.root, split, d.generated_images(split))
            if key not in loaded:
                loaded[key] = load_dataset(
                    d.dataset, d.root, split, download=d.download, **d.generated_sizes(split)
                )
        check_training_split(
            config, loaded[(d.dataset, d.root, "train", d.generated_images("train"))]
        )


def check_training_split(config: TrialConfig, train: Dataset) -> None:
    """Raise UsageError if train_size or batch_size cannot work on this training split."""
    d, batch_size = config.data, config.optim.batch_size
    images = len(train)
    if d.train_size is not None:
        try:
            balanced_subset(train.targets, d.train_size, config.run.seed, train.task.num_classes)
        except ValueError as error:
            raise UsageError(f"data.train_size for {d.dataset}: {error}") from None
        images = d.train_size
    if batch_size > images:
        where = "data.train_size" if d.train_size is not None else "its training split"
        raise UsageError(
            f"optim.batch_size={batch_size}: larger than the {images} training images of "
            f"{d.dataset} ({where}), so no step would run; allowed are 1..{images}"
        )


def check_cluster(args: argparse.Namespace, configs: Sequence[TrialConfig], use_gpus: bool) -> None:
    """Raise UsageError for settings under which no trial could run on this cluster."""
    cuda = [c for c in configs if c.run.device == "cuda"]
    if cuda and not use_gpus:
        raise UsageError(
            f"run.device='cuda': the cluster has no GPUs ({len(cuda)} trials ask for CUDA); "
            "use run.device=auto or cpu, or --accelerator=gpu on a cluster whose GPU workers "
            "are still starting"
        )
    tracking_uri = args.tracking_uri
    if is_loopback(args.mlflow_host) and not (tracking_uri and is_http_uri(tracking_uri)):
        here = ray.util.get_node_ip_address()
        elsewhere = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {here}
        if elsewhere:
            raise UsageError(
                f"the cluster has nodes at {', '.join(sorted(elsewhere))}, which cannot reach "
                f"the launcher's mlflow server on {args.mlflow_host}: give --tracking-uri of a "
                "server with basic auth (docker/compose.yaml), or --mlflow-host with "
                "--expose-tracking-server-without-auth"
            )
