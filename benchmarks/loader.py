"""Images/s of DeviceLoader against torchvision's DataLoader, both cropping + flipping CIFAR.

Run: python benchmarks/loader.py [--device cpu|cuda|auto] [--images 10000] [--workers 0 2]
The plain way: PIL images, RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize
per sample in a torch DataLoader, batches moved to the device. Both are timed over one epoch after
a warm-up epoch, in the same run; the printed ratio is DeviceLoader / DataLoader.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from pipeline.data import Dataset, DeviceLoader
from pipeline.tasks import task_for

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # CIFAR-10-like stats


class PILImages(torch.utils.data.Dataset):
    """Images kept as HWC uint8 and turned into PIL per sample, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return one transformed image and its label."""
        return self.transform(Image.fromarray(self.images[index])), int(self.targets[index])


def time_epoch(batches, device: torch.device) -> tuple[float, int]:
    """Return (seconds, images) of one pass over batches moved to the device."""
    start, count = time.perf_counter(), 0
    for inputs, targets in batches:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        count += len(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, count


def device_loader_rate(dataset: Dataset, batch_size: int, device: torch.device) -> float:
    """Return images/s of DeviceLoader in training mode with augmentation."""
    loader = DeviceLoader(dataset, batch_size, device, train=True, seed=0, augment=True)
    time_epoch(loader, device)  # warm-up: transfer and kernels
    seconds, count = time_epoch(loader, device)
    return count / seconds


def torchvision_rate(
    dataset: Dataset, batch_size: int, device: torch.device, workers: int
) -> float:
    """Return images/s of a torchvision DataLoader doing the same augmentation per sample."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    images = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
    pil = PILImages(images, dataset.targets.numpy(), transform)
    loader = torch.utils.data.DataLoader(
        pil,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    time_epoch(loader, device)  # warm-up: worker start-up
    seconds, count = time_epoch(loader, device)
    return count / seconds


def main() -> None:
    """Parse arguments, time both loaders and print images/s and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--images", type=int, default=10_000, help="images in the fake split")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    dataset = Dataset(
        name="cifar10",
        split="train",
        images=torch.randint(
            0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator
        ),
        targets=torch.randint(0, 10, (args.images,), generator=generator),
        task=task_for("cifar10"),
        mean=MEAN,
        std=STD,
    )
    print(
        f"{args.images} CIFAR-format images, batch {args.batch_size}, device {device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    ours = device_loader_rate(dataset, args.batch_size, device)
    print(f"DeviceLoader (batched crop+flip on {device}): {ours:12,.0f} images/s")
    for workers in args.workers:
        plain = torchvision_rate(dataset, args.batch_size, device, workers)
        print(
            f"torchvision DataLoader, num_workers={workers}:    {plain:12,.0f} images/s"
            f"   -> DeviceLoader is {ours / plain:.1f}x"
        )


if __name__ == "__main__":
    main()
