"""What the generated datasets (Digitclutter, Pathfinder) share: parallel generation and the cache.

Generation: a family's worker draws images start..stop-1 of a set; `generate_in_chunks` hands
it chunks of up to CHUNK_IMAGES images, in spawned worker processes when there are several,
and copies the chunks into one array, with a progress bar. Image i depends only on the family's
parameters, the seed and i, so the bytes do not depend on the workers or the chunking.

Cache: one ``.npz`` file per split under the data root, named by the family's parameters, the
split, the size, the seed and the generator version; it holds the images, the labels and the
SHA-256 of both (`checksum`). It is written atomically under a file lock, so trials that start
together generate it once and a reader never sees half a file. One rule for every family: a
cache file that cannot be read, holds arrays of another shape or dtype, or fails its checksum
is damaged and not used; it is regenerated, with a warning naming it (it is derived data: the
generator rebuilds the same bytes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vocabulary import IMAGE_SIZE

log = logging.getLogger(__name__)

CHUNK_IMAGES = 500  # images per task handed to a worker process
SPLIT_SEED_OFFSET = {"train": 0, "test": 1}  # train and test use the seeds 2*seed and 2*seed+1
# A worker's task: (*the family's parameters, start, stop) -> (start, images, labels).
Chunk = tuple[int, np.ndarray, np.ndarray]
Worker = Callable[[tuple[Any, ...]], Chunk]
Arrays = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, 32, 32], labels int64 [N, ...])
# What reading a damaged file raises: cut short, not a zip, a member missing, another shape.
DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def default_workers() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_seed(seed: int, split: str) -> int:
    """Return the generator seed of a split: train and test never share images."""
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"split={split!r}: allowed are {sorted(SPLIT_SEED_OFFSET)}")
    return 2 * seed + SPLIT_SEED_OFFSET[split]


def generate_in_chunks(
    worker: Worker,
    params: tuple[Any, ...],
    n_images: int,
    label_shape: tuple[int, ...],
    workers: int | None,
    desc: str,
    progress: bool,
) -> Arrays:
    """Return (images uint8 [N, 32, 32], labels int64 [N, *label_shape]) drawn by `worker`."""
    if n_images < 0:
        raise ValueError(f"n_images={n_images!r}: must be >= 0")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers!r}: must be >= 1 (or None for all cores)")
    images = np.empty((n_images, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.empty((n_images, *label_shape), np.int64)
    chunk = max(1, min(CHUNK_IMAGES, math.ceil(n_images / (4 * workers))))
    tasks = [(*params, s, min(s + chunk, n_images)) for s in range(0, n_images, chunk)]
    bar = tqdm(
        total=n_images,
        desc=desc,
        unit="img",
        disable=not progress,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,  # seconds; few lines in log files
    )
    with bar:
        if workers == 1 or len(tasks) <= 1:
            _collect(map(worker, tasks), images, labels, bar)
        else:
            # spawn: safe under threads (torch, Ray) where fork can deadlock.
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(tasks))) as pool:
                _collect(pool.imap_unordered(worker, tasks), images, labels, bar)
    return images, labels


def _collect(results: Iterable[Chunk], images: np.ndarray, labels: np.ndarray, bar: tqdm) -> None:
    """Copy workers' chunks into the output arrays, advancing the progress bar."""
    for start, chunk_images, chunk_labels in results:
        images[start : start + len(chunk_images)] = chunk_images
        labels[start : start + len(chunk_labels)] = chunk_labels
        bar.update(len(chunk_images))


def checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """Return the SHA-256 (hex) of the arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


def read_cache(path: Path, n_images: int, label_shape: tuple[int, ...]) -> Arrays:
    """Return the arrays of a cache file; raise ValueError (or OSError, ...) if it is damaged."""
    with np.load(path, allow_pickle=False) as stored:
        images, labels = stored["images"], stored["labels"]
        stored_sum = str(stored["sha256"])
    if images.shape != (n_images, IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"images have shape {images.shape} and dtype {images.dtype}")
    if labels.shape != (n_images, *label_shape) or labels.dtype != np.int64:
        raise ValueError(f"labels have shape {labels.shape} and dtype {labels.dtype}")
    if checksum(images, labels) != stored_sum:
        raise ValueError("checksum mismatch: the arrays are not the ones written")
    return images, labels


def write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images, labels and their checksum atomically: a reader never sees half a file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        try:
            np.savez(tmp, images=images, labels=labels, sha256=np.array(checksum(images, labels)))
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def _try_cache(path: Path, n_images: int, label_shape: tuple[int, ...], what: str, warn: bool):
    """Return the cached (images, labels), or None if the file is missing or damaged."""
    if not path.exists():
        return None
    try:
        return read_cache(path, n_images, label_shape)
    except DAMAGED as error:
        if warn:
            # stacklevel 4: the caller of the family's load_or_generate.
            warnings.warn(f"damaged {what} cache {path} ({error}); regenerating it", stacklevel=4)
        return None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path + ".lock": one process generates, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_generate(
    path: Path,
    n_images: int,
    label_shape: tuple[int, ...],
    make: Callable[[], Arrays],
    what: str,
) -> Arrays:
    """Return (images, labels) from the cache file at path, else `make` them and write it.

    `what` names the set in the log and in the warning about a damaged file, which is
    regenerated. Concurrent callers (trials starting together) generate once.
    """
    cached = _try_cache(path, n_images, label_shape, what, warn=True)
    if cached is not None:
        return cached
    with exclusive(path):
        # Another process may have written it while this one waited for the lock.
        cached = _try_cache(path, n_images, label_shape, what, warn=False)
        if cached is not None:
            return cached
        log.info("generating %d %s images: %s", n_images, what, path)
        images, labels = make()
        write_cache(path, images, labels)
    return images, labels
