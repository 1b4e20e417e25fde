"""Datasets as uint8 tensors and a loader that cuts, augments and normalises batches on the device.

On-disk layouts under a data root (those torchvision's downloads produce):
  MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  cifar-10-batches-py/data_batch_1..5, test_batch
  cifar-100-python/train, test
  digitclutter/  (generated and cached here, see pipeline.digitclutter)
  pathfinder/    (generated and cached here, see pipeline.pathfinder)
The files are read here, not through torchvision's dataset classes, so that a damaged file is
named in the error (torchvision's md5 check would only say "corrupted"); `download=True` still
fetches them with torchvision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import digitclutter, pathfinder
from pipeline.tasks import Task, task_for
from vocabulary import CLUTTER_IMAGES, IMAGE_SIZE, PATHFINDER_IMAGES

SPLITS = ("train", "test")
MNIST_PAD = 2  # px of zeros on each side: 28 -> 32
CROP_PADDING = 4  # px of zero padding before the random 32x32 crop (CIFAR augmentation)
# The layout of every batch and of the weights a trial trains: oneDNN's and cuDNN's fast one
# (benchmarks/train.py prints the ratio to contiguous batches and weights).
MEMORY_FORMAT = torch.channels_last
GENERATED_SEED = 0  # one generated set (per dataset and size) for every trial; `seed` picks subsets

# Digitclutter images come from one fixed distribution, so their normalisation is the
# generator's: mean and std (in [0, 1] units) of 100,000 training images (seed 0), checked
# against fresh samples in tests/test_data.py. The test split then needs no training split.
DIGITCLUTTER_STATS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    3: ((0.3966,), (0.2091,)),
    4: ((0.3851,), (0.2225,)),
    5: ((0.3764,), (0.2316,)),
}
# Pathfinder's likewise, per contour length L: mean and std (in [0, 1] units) of the first 20,000
# training images of the GENERATED_SEED set (pathfinder.generate(L, 20_000, seed=0), the prefix
# of every larger training set; its labels are exactly half 1), checked against fresh samples
# in tests/test_data.py. Thin bright ink on black: the std is large beside the mean.
PATHFINDER_STATS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    6: ((0.0611,), (0.1854,)),
    9: ((0.0670,), (0.1918,)),
    14: ((0.0846,), (0.2087,)),
}

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", ["train"], ["test"]),
}
# The only globals a CIFAR batch pickle refers to: NumPy's array reconstruction (module name of
# NumPy 1 and 2) and the codec Python 3 pickles of bytes use. Anything else is refused unrun.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A dataset's files are not under the data root (and download was not asked for)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be read as its format says."""


class UnsafeDatasetError(CorruptDatasetError):
    """A dataset pickle asks to run code (a global outside the CIFAR arrays' own)."""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, bytes, numbers and NumPy arrays."""

    def find_class(self, module: str, name: str) -> type:
        """Return an allowed global; refuse every other (it could run code on load)."""
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise UnsafeDatasetError(
                f"refers to {module}.{name}, which a CIFAR batch never does; refused "
                "without running it (only NumPy arrays, dicts, lists, bytes and numbers are "
                "read)"
            )
        return super().find_class(module, name)


def load_array_pickle(file: BinaryIO) -> Any:
    """Unpickle a CIFAR batch without running code: only array types are built."""
    # Python 2 pickles (the real files) hold byte strings: keep them bytes.
    return _ArrayUnpickler(file, encoding="bytes").load()


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset, held as uint8 images on the CPU."""

    name: str  # dataset name, e.g. "cifar10" or "digitclutter-3"
    split: str  # "train" or "test"
    images: torch.Tensor  # uint8 [N, C, 32, 32]
    targets: torch.Tensor  # int64 [N] class index, or uint8 [N, 10] multi-hot (Digitclutter)
    task: Task  # how errors are counted and which loss trains it
    mean: tuple[float, ...]  # per channel, of the training split, in [0, 1] units
    std: tuple[float, ...]  # per channel, of the training split, in [0, 1] units

    def __len__(self) -> int:
        """Return the number of examples."""
        return len(self.images)

    @property
    def channels(self) -> int:
        """Return the number of input channels (1 grey, 3 colour)."""
        return self.images.shape[1]

    def subset(self, indices: torch.Tensor | slice) -> Dataset:
        """Return the examples at `indices` (same stats, task and split)."""
        return dataclasses.replace(self, images=self.images[indices], targets=self.targets[indices])


def load_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    download: bool = False,
    train_size: int | None = None,
    seed: int = 0,
    clutter_images: int | None = None,
    pathfinder_images: int | None = None,
) -> Dataset:
    """Return one split of a dataset, normalisation stats from its training split.

    `train_size` keeps a class-balanced subset of the training split chosen by `seed` (ignored
    for the test split); `clutter_images` and `pathfinder_images` are the sizes of a
    Digitclutter and a Pathfinder split (default 100,000 train, 10,000 test), each generated
    once with GENERATED_SEED and cached under root (`download` does not apply); each is
    ignored for the other datasets.
    """
    task = task_for(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: allowed are {list(SPLITS)}")
    root = Path(root)
    if task.multilabel:
        count = _generated_count(clutter_images, CLUTTER_IMAGES[split], "clutter_images")
        images, targets = _load_digitclutter(root, task.digits_per_image, count, split)
        mean, std = DIGITCLUTTER_STATS[task.digits_per_image]
    elif task.contour_length:
        count = _generated_count(pathfinder_images, PATHFINDER_IMAGES[split], "pathfinder_images")
        images, targets = _load_pathfinder(root, task.contour_length, count, split)
        mean, std = PATHFINDER_STATS[task.contour_length]
    else:
        images, targets = _load_split(name, root, split, download)
        mean, std = (
            _train_stats(name, root, download) if split == "test" else _channel_stats(images)
        )
    dataset = Dataset(name, split, images, targets, task, mean, std)
    if split == "train" and train_size is not None:
        dataset = dataset.subset(balanced_subset(targets, train_size, seed, task.num_classes))
    return dataset


def _generated_count(count: int | None, default: int, name: str) -> int:
    """Return the size of a generated split: `count`, or the default if None."""
    if count is None:
        return default
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}={count!r}: must be a positive int or None")
    return count


def balanced_subset(
    targets: torch.Tensor, size: int, seed: int, classes: int | None = None
) -> torch.Tensor:
    """Return sorted indices of a seeded subset with size // C examples of each of C classes.

    The size % C left over go one each to randomly chosen classes. Multi-hot targets have no
    single class per example, so they get a plain seeded subset.
    """
    if not isinstance(size, int | np.integer) or not 1 <= size <= len(targets):
        raise ValueError(f"train_size={size!r}: allowed are 1..{len(targets)} (or None: all)")
    generator = torch.Generator().manual_seed(seed)
    if targets.ndim == 2:
        return torch.randperm(len(targets), generator=generator)[:size].sort().values
    classes = int(targets.max()) + 1 if classes is None else classes
    per_class = torch.full((classes,), size // classes)
    per_class[torch.randperm(classes, generator=generator)[: size % classes]] += 1
    chosen = []
    for label in range(classes):
        members = torch.nonzero(targets == label).flatten()
        if len(members) < per_class[label]:
            raise ValueError(
                f"train_size={size}: class {label} has {len(members)} examples, "
                f"{int(per_class[label])} needed for a class-balanced subset"
            )
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: per_class[label]]])
    return torch.cat(chosen).sort().values


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return per-channel (mean, std) of uint8 images in [0, 1] units."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(pixels.mean(dim=1).tolist()), tuple(pixels.std(dim=1, unbiased=False).tolist())


def _file_signature(root: Path, name: str) -> tuple[tuple[str, int, int], ...]:
    """Return (path, size, mtime) of a dataset's training files: a cache key that sees changes."""
    paths = _expected_files(name, root, "train")
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.exists())


def _train_stats(
    name: str, root: Path, download: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the training split's per-channel (mean, std), computed once per process."""
    return _cached_train_stats(name, root, download, _file_signature(root, name))


@functools.lru_cache(maxsize=16)
def _cached_train_stats(name: str, root: Path, download: bool, signature: tuple) -> tuple:
    """Return _channel_stats of the training split (signature only keys the cache)."""
    images, _ = _load_split(name, root, "train", download)
    return _channel_stats(images)


def _expected_files(name: str, root: Path, split: str) -> list[Path]:
    """Return the files a split of a torchvision dataset is read from."""
    if name == "mnist":
        return [root / "MNIST" / "raw" / f for f in MNIST_FILES[split]]
    folder, train_files, test_files = CIFAR_FILES[name]
    return [root / folder / f for f in (train_files if split == "train" else test_files)]


def _load_split(
    name: str, root: Path, split: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N, C, 32, 32], targets int64 [N]) of MNIST or CIFAR."""
    files = _expected_files(name, root, split)
    if name == "mnist":
        # torchvision keeps both the .gz and the extracted file; either will do.
        missing = [f for f in files if not f.exists() and not _gz(f).exists()]
    else:
        missing = [f for f in files if not f.exists()]
    if missing and download:
        _download(name, root, split)
    elif missing:
        raise DatasetNotFoundError(
            f"{name} {split} split not found under data root {root.resolve()}: missing "
            f"{', '.join(str(f) for f in missing)}. Pass --download (data.download=True) to "
            f"fetch it with torchvision, or copy torchvision's layout "
            f"({files[0].parent.relative_to(root)}/) into {root}."
        )
    if name == "mnist":
        return _read_mnist(*files)
    return _read_cifar(name, files)


def _gz(path: Path) -> Path:
    """Return the gzipped name of a file."""
    return path.with_name(path.name + ".gz")


def _download(name: str, root: Path, split: str) -> None:
    """Fetch a dataset into root with torchvision (needs internet)."""
    import torchvision

    dataset_class = {
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[name]
    dataset_class(str(root), train=split == "train", download=True)


def _read_idx(path: Path) -> np.ndarray:
    """Return the uint8 array of an idx file (MNIST's format), plain or gzipped."""
    source = path if path.exists() else _gz(path)
    try:
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
            raise ValueError("not an idx file of uint8 (bad magic number)")
        ndim = data[3]
        header = 4 + 4 * ndim
        shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        if len(data) != header + math.prod(shape):
            raise ValueError(
                f"{len(data) - header} bytes of data, the header says shape {shape} "
                f"({math.prod(shape)} bytes)"
            )
    except (OSError, EOFError, ValueError) as error:
        raise CorruptDatasetError(f"damaged MNIST file {source}: {error}") from error
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _read_mnist(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Return MNIST images padded to [N, 1, 32, 32] and their labels."""
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CorruptDatasetError(f"damaged MNIST file {images_path}: shape {images.shape}")
    if labels.shape != (len(images),) or labels.max(initial=0) > 9:
        raise CorruptDatasetError(
            f"damaged MNIST file {labels_path}: {labels.shape} labels for {len(images)} images"
        )
    padded = np.pad(images, ((0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)))
    return torch.from_numpy(padded).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_cifar(name: str, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return CIFAR images [N, 3, 32, 32] and labels from the pickled batches."""
    label_key = "labels" if name == "cifar10" else "fine_labels"
    classes = task_for(name).num_classes
    images, labels = [], []
    for path in files:
        try:
            with open(path, "rb") as f:
                batch = load_array_pickle(f)
            # Python 2 pickles (the real files) load with bytes keys.
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data = np.asarray(batch["data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
                raise ValueError(f"data has shape {data.shape}, expected [n, 3072]")
            if batch_labels.shape != (len(data),):
                raise ValueError(f"{batch_labels.shape} labels for {len(data)} images")
            if len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < classes:
                raise ValueError(f"labels outside 0..{classes - 1}")
        except UnsafeDatasetError as error:
            raise UnsafeDatasetError(f"unsafe {name} file {path}: {error}") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptDatasetError(f"damaged {name} file {path}: {error}") from error
        except pickle.UnpicklingError as error:
            raise CorruptDatasetError(f"damaged {name} file {path}: {error}") from error
        images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _load_digitclutter(
    root: Path, n_digits: int, count: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return Digitclutter images [N, 1, 32, 32] and multi-hot targets uint8 [N, 10]."""
    images, labels = digitclutter.load_or_generate(root, n_digits, count, GENERATED_SEED, split)
    targets = torch.zeros(count, 10, dtype=torch.uint8)
    targets.scatter_(1, torch.from_numpy(labels), 1)
    return torch.from_numpy(images).unsqueeze(1), targets


def _load_pathfinder(
    root: Path, contour_length: int, count: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return Pathfinder images [N, 1, 32, 32] and targets int64 [N] (1: markers joined)."""
    images, labels = pathfinder.load_or_generate(root, contour_length, count, GENERATED_SEED, split)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


class DeviceLoader:
    """Batches of a whole split kept on the device: seeded order, batched crop + flip, normalised.

    Train mode: a fresh permutation each epoch (seeded by (seed, epoch) on the CPU, so every
    device sees the same order), the last partial batch dropped, CIFAR augmented by default.
    Eval mode: the split in order, every example once, never augmented.
    The epoch advances after each complete pass; `set_epoch` sets it (e.g. when resuming).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: str | torch.device,
        train: bool,
        seed: int = 0,
        augment: bool | None = None,
        memory_format: torch.memory_format = MEMORY_FORMAT,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive int")
        if train and len(dataset) < batch_size:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {len(dataset)} examples of "
                f"{dataset.name} {dataset.split}: a training epoch would have no full batch"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: must be a non-negative int")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        if augment is None:
            augment = dataset.name.startswith("cifar")
        self.augment = train and augment  # augmentation only ever in training
        # uint8 on the device: a quarter of float32's memory and transfer.
        self.images = dataset.images.to(self.device)
        self.targets = dataset.targets.to(self.device)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device)
        # x_normalised = (x / 255 - mean) / std = x * scale + shift
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
        self._shift = (-mean / std).view(1, -1, 1, 1)
        self.memory_format = memory_format
        self.epoch = 0

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        if self.train:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose permutation and augmentation the next pass uses."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Return what resuming needs: the epoch."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the epoch from state_dict()."""
        self.epoch = int(state["epoch"])

    def _generator(self) -> torch.Generator:
        """Return a CPU generator seeded by (seed, epoch)."""
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]))

    def __iter__(self):
        """Yield (inputs float [B, C, 32, 32] normalised, targets) on the device."""
        batches = len(self)
        used = min(batches * self.batch_size, len(self.images))
        order = shifts = flips = None
        if self.train:
            generator = self._generator()
            order = torch.randperm(len(self.images), generator=generator)[:used]
            order = order.to(self.device)
            if self.augment:
                shifts = torch.randint(0, 2 * CROP_PADDING + 1, (used, 2), generator=generator)
                flips = torch.rand(used, generator=generator) < 0.5
                shifts, flips = shifts.to(self.device), flips.to(self.device)
        for b in range(batches):
            rows = slice(b * self.batch_size, min((b + 1) * self.batch_size, used))
            with _one_cpu_thread(self.device):
                if order is None:
                    images, targets = self.images[rows], self.targets[rows]
                else:
                    images, targets = self.images[order[rows]], self.targets[order[rows]]
                if shifts is not None:
                    images = crop_flip(images, shifts[rows], flips[rows])
                inputs = self._normalise(images)
            yield inputs, targets
        self.epoch += 1

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Return float32 inputs normalised per channel."""
        inputs = images.float().mul_(self._scale).add_(self._shift)
        return inputs.contiguous(memory_format=self.memory_format)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the enclosed CPU tensor ops on one thread, restoring the thread count after."""
    # A batch is too small for intra-op threads to pay off; on a busy machine their
    # synchronisation made batches 10-40x slower (benchmarks/loader.py: 2,200 vs 96,000 img/s).
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Return random 32x32 crops of the zero-padded images, flipped where `flips`, as one gather.

    shifts: int64 [B, 2] (row, column) of each crop's corner in the padded image, 0..2*padding.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (CROP_PADDING,) * 4)
    padded_width = padded.shape[3]
    rows = shifts[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    columns = torch.arange(width, device=images.device).expand(batch, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + shifts[:, 1:]  # [B, W]
    # One flat index per output pixel into the padded H*W plane, shared by all channels.
    index = (rows[:, :, None] * padded_width + columns[:, None, :]).view(batch, 1, -1)
    pixels = padded.view(batch, channels, -1).gather(2, index.expand(-1, channels, -1))
    return pixels.view(batch, channels, height, width)
