"""Measure the three indices of a torchvision ResNet: curves, CI/RI/DI and Fig 2's panels.

    python -m pipeline.measure --arch resnet50 --weights resnet50.pt \\
        --image-folder /path/to/imagenet/val --image-size 224 --examples 2000 --out measured/

writes `curves.parquet` (the columns of a trial's curves, vocabulary.CURVE_COLUMNS),
`indices.json` (CI, RI, DI per stage and their means, by `pipeline.indices.iteration_indices`
as for a trial) and `fig2.png` (Fig 2's curve and index panels for this one network). Stages
and transitions: `models.torchvision_resnet`; the whole procedure: docs/measure.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from models.staged import block_counts
from models.torchvision_resnet import LAYERS, TorchvisionResNet
from pipeline.data import DeviceLoader, load_dataset
from pipeline.indices import default_branch_examples, iteration_indices, perturbation_curves
from pipeline.run_contents import CURVES_ARTIFACT
from pipeline.tasks import Task
from pipeline.train import INDEX_SUBSET_SEED, resolve_device
from vocabulary import (
    CLUTTER_IMAGES,
    DATASETS,
    DEVICES,
    IMAGE_SIZE,
    INDEX_NAMES,
    INPUT_CHANNELS,
    TORCHVISION_PREFIX,
    TORCHVISION_RESNETS,
    dataset_label,
)

INDICES_FILE = "indices.json"
FIGURE_FILE = "fig2.png"
EXIT_USAGE = 2  # bad arguments, a missing file, weights that do not fit: nothing was measured
# torchvision's ImageNet weights expect these per-channel statistics ...
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ... and ImageNet's evaluation crop: the shorter side resized to 256, the centre 224 kept.
RESIZE_RATIO = 256 / 224


class MeasureError(ValueError):
    """An argument, file or set of weights that cannot be measured; its message is one line."""


@dataclass
class Measurement:
    """What one measurement produced."""

    arch: str  # torchvision's name, e.g. "resnet50"
    data: str  # what was measured on: a dataset name or an image folder
    task: Task  # the error and chance of the data
    examples: int  # images the curves ran on
    curves: pd.DataFrame  # vocabulary.CURVE_COLUMNS
    indices: dict[str, float]  # ci, ri, di per stage (ci_stage1, ...) and their means
    stages: list[dict[str, Any]]  # per stage: layer, transition, blocks
    seconds: float  # wall time of the curves

    @property
    def final_error(self) -> float:
        """Return the unperturbed network's error on the examples (r_s(N) of any stage)."""
        readout = self.curves[(self.curves["curve"] == "readout") & (self.curves["stage"] == 1)]
        return float(readout.sort_values("step")["error"].iloc[-1])


def build_network(
    arch: str, num_classes: int, in_channels: int = 3, weights: str | None = None
) -> TorchvisionResNet:
    """Return a torchvision ResNet with random weights, or those of a state_dict file."""
    if arch not in TORCHVISION_RESNETS:
        raise MeasureError(f"--arch {arch!r}: allowed are {', '.join(TORCHVISION_RESNETS)}")
    network = TorchvisionResNet(arch, num_classes, in_channels)
    if weights is not None:
        load_weights(network, read_state_dict(weights), weights)
    return network


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Return the tensors of a state_dict file; torch.load(weights_only=True) runs no code."""
    if not os.path.isfile(path):
        raise MeasureError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MeasureError(
            f"--weights {path}: not a state_dict of plain tensors ({first})"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise MeasureError(
            f"--weights {path}: holds a {type(state).__name__}, not a state_dict "
            "(save model.state_dict())"
        )
    return dict(state)


def load_weights(network: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Load a file's state_dict into the network, or raise MeasureError saying what differs."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for keys, what in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (reshaped, "of another shape, file vs network"),
        )
        if keys
    ]
    if problems:
        arch = getattr(network, "arch", type(network).__name__)
        hint = ""
        if any(k.startswith(("fc.", "conv1.")) for k in reshaped):
            # The data sets fc's outputs (its classes) and conv1's input channels.
            hint = "; the data's classes and channels must be the network's"
        raise MeasureError(
            f"--weights {path} does not fit {arch}: keys {'; '.join(problems)}{hint}"
        )
    network.load_state_dict(state)


def _seeded_subset(count: int, examples: int | None) -> torch.Tensor | None:
    """Return the indices of `examples` seeded images (a trial's index subset), None for all."""
    if examples is None or examples >= count:
        return None
    generator = torch.Generator().manual_seed(INDEX_SUBSET_SEED)
    return torch.randperm(count, generator=generator)[:examples]


def project_batches(
    dataset: str,
    root: str,
    batch_size: int,
    device: torch.device,
    examples: int | None = None,
    download: bool = False,
    clutter_images: int | None = None,
) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], Task, int]:
    """Return test batches of a project dataset (a trial's index images), its task and count."""
    if dataset not in DATASETS:
        raise MeasureError(f"--dataset {dataset!r}: allowed are {', '.join(DATASETS)}")
    try:
        test_set = load_dataset(
            dataset, root, "test", download=download, clutter_images=clutter_images
        )
    except (FileNotFoundError, ValueError) as error:
        raise MeasureError(f"--dataset {dataset} under {root}: {error}") from None
    subset = _seeded_subset(len(test_set), examples)
    if subset is not None:
        test_set = test_set.subset(subset)
    loader = DeviceLoader(test_set, batch_size, device, train=False, seed=INDEX_SUBSET_SEED)
    return loader, test_set.task, len(test_set)


def folder_batches(
    folder: str, image_size: int, batch_size: int, examples: int | None = None, workers: int = 0
) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], Task, int]:
    """Return batches of an ImageFolder: resized, centre-cropped, ImageNet-normalised."""
    from torchvision import datasets, transforms

    if not os.path.isdir(folder):
        raise MeasureError(f"--image-folder {folder}: no such directory")
    transform = transforms.Compose(
        [
            transforms.Resize(round(image_size * RESIZE_RATIO)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    try:
        images = datasets.ImageFolder(folder, transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise MeasureError(f"--image-folder {folder}: {error}") from None
    subset = _seeded_subset(len(images), examples)
    data: torch.utils.data.Dataset = images
    if subset is not None:
        data = torch.utils.data.Subset(images, subset.tolist())
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    # The folders, sorted by name, are the classes: ImageNet's val split in wnid folders
    # gets the indices of torchvision's ImageNet weights.
    task = Task(f"image folder {os.path.basename(os.path.normpath(folder))}", len(images.classes))
    return loader, task, len(images) if subset is None else len(subset)


def stage_table(network: TorchvisionResNet) -> list[dict[str, Any]]:
    """Return per stage its torchvision layer, whether it has a transition, and N_s."""
    counts = block_counts(network)
    return [
        {
            "stage": s + 1,
            "layer": layer,
            "transition": len(getattr(network, layer)) > n,
            "blocks": n,
        }
        for s, (layer, n) in enumerate(zip(LAYERS, counts, strict=True))
    ]


def measure(
    network: TorchvisionResNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    task: Task,
    examples: int,
    extra_evaluations: int = 16,
    branch_examples: int | None = None,
    data: str = "",
    progress: bool = True,
) -> Measurement:
    """Return the perturbation curves and indices of the network on the batches."""
    total = len(batches) if isinstance(batches, Sized) else None
    shown = tqdm(
        batches,
        total=total,
        desc=f"curves {network.arch.removeprefix(TORCHVISION_PREFIX)}",
        unit="batch",
        disable=not progress,
    )
    start = time.perf_counter()
    curves = perturbation_curves(
        network, shown, task, extra_evaluations, max_branch_examples=branch_examples
    )
    seconds = time.perf_counter() - start
    stages = stage_table(network)
    indices = iteration_indices(curves, task.chance_error, num_stages=len(stages))
    arch = network.arch.removeprefix(TORCHVISION_PREFIX)
    return Measurement(arch, data, task, examples, curves, indices, stages, seconds)


def _json_number(value: float) -> float | None:
    """Return the value, or None for NaN: JSON has no NaN (an index at chance is undefined)."""
    return None if math.isnan(value) else value


def indices_document(result: Measurement, weights: str | None) -> dict[str, Any]:
    """Return the contents of indices.json."""
    return {
        "arch": result.arch,
        "weights": weights,
        "data": result.data,
        "examples": result.examples,
        "num_classes": result.task.num_classes,
        "chance_error": result.task.chance_error,
        "final_error": result.final_error,
        "stages": result.stages,
        "indices": {k: _json_number(v) for k, v in result.indices.items()},
        "seconds": result.seconds,
    }


def draw_fig2(result: Measurement) -> Figure:
    """Draw Fig 2's panels a (curves per stage) and b (indices per stage) for one network."""
    # The paper's Fig 2 is drawn by the same function; imported here, where it is drawn, so
    # measuring alone never loads matplotlib's figure code.
    from analysis import paper_figures

    # One network has no panel c (error against CI and DI across networks): no error column.
    curves = result.curves.assign(run_id=result.arch, emphasised=True)
    index_rows = pd.DataFrame([{"run_id": result.arch, **result.indices}])
    title = (
        f"Fig 2  {result.arch}, {result.data}, {result.examples} images\n"
        "a  perturbation curves (dotted: chance)"
    )
    undefined = [name for name, value in result.indices.items() if math.isnan(value)]
    lines = [f"undefined (error at chance): {', '.join(undefined)}"] if undefined else []
    figure: Figure = paper_figures.fig2_panels(
        curves, index_rows, result.task.chance_error, title, lines
    )
    return figure


def write_measurement(result: Measurement, out: str, weights: str | None) -> list[Path]:
    """Write curves.parquet, indices.json and fig2.png into `out`; return their paths."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / CURVES_ARTIFACT, directory / INDICES_FILE, directory / FIGURE_FILE]
    result.curves.to_parquet(paths[0], index=False)
    paths[1].write_text(json.dumps(indices_document(result, weights), indent=2) + "\n")
    draw_fig2(result).savefig(paths[2], dpi=120)
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the command line, checked by argparse (exit 2 on a bad one)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.measure",
        description="Perturbation curves, CI/RI/DI and Fig 2's panels of a torchvision ResNet.",
    )
    parser.add_argument("--arch", required=True, choices=TORCHVISION_RESNETS)
    parser.add_argument("--weights", help="a state_dict file (torch.load, weights_only=True)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=DATASETS, help="a project dataset's test split")
    data.add_argument("--image-folder", help="an ImageFolder: one subfolder of images per class")
    parser.add_argument("--data-root", default="data", help="the project datasets' root")
    parser.add_argument("--download", action="store_true", help="let torchvision download")
    parser.add_argument(
        "--clutter-images",
        type=int,
        default=CLUTTER_IMAGES["test"],
        help="Digitclutter test images generated (default: the paper's %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="crop of an image folder")
    parser.add_argument("--examples", type=int, help="a seeded subset of this many images")
    parser.add_argument("--extra-evaluations", type=int, default=16, help="K (default 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--branch-examples", type=int, help="perturbed examples per batch")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="image folder loader processes (default: up to 4)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="directory for the three files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("examples", "batch_size", "branch_examples", "image_size", "clutter_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be >= 1")
    if args.workers < 0 or args.extra_evaluations < 1:
        parser.error("--workers must be >= 0 and --extra-evaluations >= 1")
    return args


def run(args: argparse.Namespace) -> Measurement:
    """Build the network and the batches, measure, and write the files."""
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise MeasureError(str(error).replace("run.device", "--device")) from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Read before any data is loaded: a bad file fails at once.
    state = None if args.weights is None else read_state_dict(args.weights)
    if args.dataset is not None:
        batches, task, count = project_batches(
            args.dataset,
            args.data_root,
            args.batch_size,
            device,
            args.examples,
            args.download,
            args.clutter_images,
        )
        in_channels, data, size = (
            INPUT_CHANNELS[args.dataset],
            dataset_label(args.dataset),
            IMAGE_SIZE,
        )
    else:
        batches, task, count = folder_batches(
            args.image_folder, args.image_size, args.batch_size, args.examples, args.workers
        )
        in_channels, data, size = 3, f"{args.image_folder} at {args.image_size} px", args.image_size
    network = TorchvisionResNet(args.arch, task.num_classes, in_channels)
    if state is not None:
        load_weights(network, state, args.weights)
    network = network.to(device)
    branch_examples = args.branch_examples
    if branch_examples is None:
        # The default budget is set for 32 px images; larger ones need proportionally less.
        scaled = default_branch_examples(device) * (IMAGE_SIZE / size) ** 2
        branch_examples = max(1, int(scaled))
    counts = ", ".join(str(n) for n in block_counts(network))
    print(
        f"measuring {args.arch} (stages of {counts} blocks) on {count} images of {data}, "
        f"{task.num_classes} classes, chance error {task.chance_error:.4g}, on {device}",
        file=sys.stderr,
    )
    result = measure(
        network,
        batches,
        task,
        count,
        args.extra_evaluations,
        branch_examples,
        data,
        progress=not args.quiet,
    )
    paths = write_measurement(result, args.out, args.weights)
    print(summary(result), file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return result


def summary(result: Measurement) -> str:
    """Return the measurement in a few lines: error, then CI, RI, DI per stage and overall."""
    lines = [
        f"error {result.final_error:.4f} (chance {result.task.chance_error:.4f}), "
        f"curves in {result.seconds:.1f} s"
    ]
    stages = [f"_stage{row['stage']}" for row in result.stages] + [""]
    for suffix in stages:
        values = "  ".join(f"{n.upper()} {result.indices[n + suffix]:.3f}" for n in INDEX_NAMES)
        lines.append(f"{suffix.lstrip('_') or 'overall':>8}  {values}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; exit 2 with one line on a bad argument, file or weights."""
    args = parse_args(argv)
    try:
        run(args)
    except MeasureError as error:
        print(f"python -m pipeline.measure: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
