"""Training throughput of one trial's epoch (images/s) per width, on random CIFAR-format data.

    python benchmarks/train.py                              # auto device, widths 8 16 32 64
    python benchmarks/train.py --device cpu --widths 8 16 --blocks 4 --images 1024
    python benchmarks/train.py --device cuda --coupling 0.9 --block icr

Each width runs `--repeats` epochs of `pipeline.train.train_epoch` (the first also warms up
cuDNN's autotuner) and reports the last. The same epoch is also timed the plain way (fp32,
contiguous weights and batches) and the table prints the ratio.
"""

from __future__ import annotations

import argparse

import torch

from pipeline.config import TrialConfig
from pipeline.data import Dataset
from pipeline.tasks import task_for
from pipeline.train import Trial, build_trial, resolve_device, train_epoch

TEST_IMAGES = 128  # the test split is built but not used here


def random_cifar(images: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Return (train, test) splits of uniform random uint8 images with random CIFAR-10 labels."""
    generator = torch.Generator().manual_seed(seed)
    task = task_for("cifar10")
    splits = []
    for split, count in (("train", images), ("test", TEST_IMAGES)):
        pixels = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, task.num_classes, (count,), generator=generator)
        splits.append(Dataset("cifar10", split, pixels, labels, task, (0.5,) * 3, (0.29,) * 3))
    return splits[0], splits[1]


def images_per_second(trial: Trial, repeats: int) -> float:
    """Return the training throughput of the last of `repeats` epochs."""
    for epoch in range(1, repeats + 1):
        metrics = train_epoch(trial, epoch)
    return metrics["images_per_second"]


def plain(trial: Trial) -> Trial:
    """Return the trial switched to fp32 with contiguous weights and batches (the plain way)."""
    trial.model.to(memory_format=torch.contiguous_format)
    trial.train_loader.memory_format = torch.contiguous_format
    trial.step.mixed_precision = False
    return trial


def main() -> None:
    """Print images/s per width (and, on CUDA, the ratio to plain fp32)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--blocks", type=int, default=16, help="blocks per stage (N)")
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--block", default="ordinary", help="ordinary, icr or pcr")
    parser.add_argument("--coupling", type=float, default=0.0, help="lambda (0: no coupler)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per width; last timed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    splits = random_cifar(args.images)
    print(
        f"device {device}, N={args.blocks}, {args.images} images, batch {args.batch_size}, "
        f"block {args.block}, coupling {args.coupling}, threads {torch.get_num_threads()}"
    )
    header = f"{'width':>5} {'parameters':>10} {'images/s':>9}"
    print(header + f" {'plain':>9} {'ratio':>6}")
    for width in args.widths:
        config = TrialConfig.from_dict(
            {
                "model": {
                    "width": width,
                    "blocks_per_stage": args.blocks,
                    "block": args.block,
                    "recurrent_init": args.coupling > 0,
                },
                "coupling.lam": args.coupling,
                "optim": {
                    "batch_size": args.batch_size,
                    "epochs": args.repeats,
                    "warmup_epochs": 0,
                },
                "run.device": device.type,
            }
        )
        trial = build_trial(config, device, splits)
        parameters = sum(p.numel() for p in trial.model.parameters())
        fast = images_per_second(trial, args.repeats)
        line = f"{width:>5} {parameters:>10,} {fast:>9.0f}"
        slow = images_per_second(plain(build_trial(config, device, splits)), args.repeats)
        line += f" {slow:>9.0f} {fast / slow:>6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
