"""Digitclutter: n occluding digits on grey, drawn at 512x512, averaged to 32x32 (docs/method.md).

Reference generator: cjspoerer/digitclutter (ImageMagick, Helvetica Bold). Ours draws DejaVu Sans
Bold (shipped with matplotlib) with Pillow. Each digit is black with a white outline, drawn like
ImageMagick's ``-draw "gravity Center ... text x,y"``: the font's layout box of the digit (advance
width x ascent+descent) is centred on the canvas centre plus the sampled offset (+y down). Later
digits are composited over earlier ones, so they occlude them completely.

Speed: the outlined, horizontally scaled glyph of each digit is rendered once per process and kept
as two float arrays (what survives of the canvas underneath, and what the glyph adds); an image is
then a few array multiply-adds on the 512x512 canvas and one 16x16 block mean. Offsets are whole
pixels at 512x512 (as the reference's ``int(image_size * offset)``), so the pasting is exact.

Determinism: image i's digits and offsets come from ``np.random.default_rng([seed, n_digits, i])``,
so a given seed gives the same bytes whatever the number of workers or chunking, and the first k
images of a set of N are the set of k.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabulary import IMAGE_SIZE

log = logging.getLogger(__name__)

GENERATOR_VERSION = "dc1"  # bump when rendering changes: it is part of every cache file's name
CANVAS_SIZE = 512  # px, the rendering resolution
BLOCK = CANVAS_SIZE // IMAGE_SIZE  # 16 px per output pixel
BACKGROUND = 119  # grey level of the canvas
FONT_SIZE = 384  # px
OUTLINE_WIDTH = 10  # px of white outline outside the black digit
X_SCALE = 0.85  # horizontal squeeze of DejaVu Sans Bold towards Arial's proportions
X_OFFSET_RANGE = (-0.29, 0.29)  # fraction of the image size, from the centre
Y_OFFSET_MEAN = 0.076  # fraction of the image size, +y down
Y_OFFSET_RANGE = (-0.19, 0.19)  # fraction of the image size, around Y_OFFSET_MEAN
SPLIT_SEED_OFFSET = {"train": 0, "test": 1}  # train and test use the seeds 2*seed and 2*seed+1
CHUNK_IMAGES = 500  # images per task handed to a worker process

# Per process: digit -> (keep, add, (dx, dy)): canvas[region] = canvas[region] * keep + add, where
# (dx, dy) is the layer's top-left corner relative to the layout-box centre, in px.
_GLYPHS: dict[int, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}


def font_path() -> str:
    """Return the path of DejaVu Sans Bold as shipped with matplotlib."""
    from matplotlib.font_manager import FontProperties, findfont

    return findfont(FontProperties(family="DejaVu Sans", weight="bold"), fallback_to_default=False)


def _render_glyph(digit: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Return (keep, add, corner) of one outlined, squeezed digit: see _GLYPHS."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path(), FONT_SIZE)
    ascent, descent = font.getmetrics()
    advance = font.getlength(str(digit))
    pad = 2 * OUTLINE_WIDTH
    width, height = math.ceil(advance) + 2 * pad, ascent + descent + 2 * pad
    origin = (pad, pad + ascent)  # baseline-left of the text
    # Like ImageMagick's two draws: the stroke first (white), then the fill (black) on top.
    outer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(outer).text(
        origin, str(digit), fill=255, font=font, anchor="ls", stroke_width=OUTLINE_WIDTH
    )
    face = Image.new("L", (width, height), 0)
    ImageDraw.Draw(face).text(origin, str(digit), fill=255, font=font, anchor="ls")
    squeezed = round(width * X_SCALE)
    resize = (squeezed, height)
    outer_alpha = np.asarray(outer.resize(resize, Image.Resampling.LANCZOS), np.float32) / 255.0
    face_alpha = np.asarray(face.resize(resize, Image.Resampling.LANCZOS), np.float32) / 255.0
    keep = (1.0 - outer_alpha) * (1.0 - face_alpha)
    add = 255.0 * outer_alpha * (1.0 - face_alpha)
    # Trim rows and columns the glyph leaves untouched.
    rows = np.flatnonzero((keep < 1.0).any(axis=1))
    cols = np.flatnonzero((keep < 1.0).any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Layout-box centre in layer coordinates, after the horizontal squeeze.
    centre_x = (pad + advance / 2.0) * squeezed / width
    centre_y = pad + (ascent + descent) / 2.0
    corner = (round(c0 - centre_x), round(r0 - centre_y))
    keep = np.ascontiguousarray(keep[r0:r1, c0:c1])
    add = np.ascontiguousarray(add[r0:r1, c0:c1])
    return keep, add, corner


def _glyph(digit: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Return the cached rendering of a digit, rendering it on first use in this process."""
    if digit not in _GLYPHS:
        _GLYPHS[digit] = _render_glyph(digit)
    return _GLYPHS[digit]


def sample_image(n_digits: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (digits int64 [n], offsets int [n, 2] in px at 512) of image `index`."""
    rng = np.random.default_rng([seed, n_digits, index])
    digits = rng.choice(10, size=n_digits, replace=False).astype(np.int64)
    x = rng.uniform(*X_OFFSET_RANGE, size=n_digits)
    y = Y_OFFSET_MEAN + rng.uniform(*Y_OFFSET_RANGE, size=n_digits)
    # int() truncates towards zero, as the reference's int(image_size * offset).
    offsets = np.stack([np.trunc(CANVAS_SIZE * x), np.trunc(CANVAS_SIZE * y)], axis=1).astype(int)
    return digits, offsets


def render_canvas(digits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return the 512x512 float32 canvas with the digits drawn in order (later on top)."""
    canvas = np.full((CANVAS_SIZE, CANVAS_SIZE), BACKGROUND, np.float32)
    centre = CANVAS_SIZE // 2
    for digit, (ox, oy) in zip(digits, offsets, strict=True):
        keep, add, (dx, dy) = _glyph(int(digit))
        top, left = centre + oy + dy, centre + ox + dx
        # Clip the glyph to the canvas.
        r0, c0 = max(top, 0), max(left, 0)
        r1 = min(top + keep.shape[0], CANVAS_SIZE)
        c1 = min(left + keep.shape[1], CANVAS_SIZE)
        if r0 >= r1 or c0 >= c1:
            continue
        region = canvas[r0:r1, c0:c1]
        glyph_rows = slice(r0 - top, r1 - top)
        glyph_cols = slice(c0 - left, c1 - left)
        region *= keep[glyph_rows, glyph_cols]
        region += add[glyph_rows, glyph_cols]
    return canvas


def reference_canvas(digits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return the 512x512 canvas drawn the plain way: Pillow text on a full layer per digit.

    Slow; it is the definition that render_canvas's cached glyphs are checked against.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path(), FONT_SIZE)
    canvas = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), BACKGROUND)
    wide = round(CANVAS_SIZE / X_SCALE)  # drawn unsqueezed, then squeezed to 512
    for digit, (ox, oy) in zip(digits, offsets, strict=True):
        layer = Image.new("LA", (wide, CANVAS_SIZE), (0, 0))
        # "mm": the middle of the advance width and of ascender..descender, i.e. the layout box.
        centre = (wide / 2 + ox / X_SCALE, CANVAS_SIZE / 2 + oy)
        ImageDraw.Draw(layer).text(
            centre,
            str(int(digit)),
            fill=(0, 255),
            font=font,
            anchor="mm",
            stroke_width=OUTLINE_WIDTH,
            stroke_fill=(255, 255),
        )
        layer = layer.resize((CANVAS_SIZE, CANVAS_SIZE), Image.Resampling.LANCZOS)
        canvas.paste(layer.getchannel(0), (0, 0), layer.getchannel(1))
    return np.asarray(canvas, np.float32)


def downsample(canvas: np.ndarray) -> np.ndarray:
    """Return the 32x32 uint8 image: the mean of each 16x16 block, rounded."""
    blocks = canvas.reshape(IMAGE_SIZE, BLOCK, IMAGE_SIZE, BLOCK).mean(axis=(1, 3))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)


def _generate_range(args: tuple[int, int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Return (start, images, labels) of images start..stop-1 (a worker's task)."""
    n_digits, seed, start, stop = args
    images = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.empty((stop - start, n_digits), np.int64)
    for row, index in enumerate(range(start, stop)):
        digits, offsets = sample_image(n_digits, seed, index)
        images[row] = downsample(render_canvas(digits, offsets))
        labels[row] = digits
    return start, images, labels


def default_workers() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generate(
    n_digits: int,
    n_images: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 32, 32], labels int64 [N, n] in drawing order)."""
    if not 1 <= n_digits <= 10:
        raise ValueError(f"n_digits={n_digits!r}: allowed are 1..10 (distinct digits)")
    if n_images < 0:
        raise ValueError(f"n_images={n_images!r}: must be >= 0")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers!r}: must be >= 1 (or None for all cores)")
    images = np.empty((n_images, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.empty((n_images, n_digits), np.int64)
    chunk = max(1, min(CHUNK_IMAGES, math.ceil(n_images / (4 * workers))))
    tasks = [(n_digits, seed, s, min(s + chunk, n_images)) for s in range(0, n_images, chunk)]
    bar = tqdm(
        total=n_images,
        desc=f"digitclutter-{n_digits}",
        unit="img",
        disable=not progress,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,  # seconds; few lines in log files
    )
    with bar:
        if workers == 1 or len(tasks) <= 1:
            results = map(_generate_range, tasks)
            _collect(results, images, labels, bar)
        else:
            # spawn: safe under threads (torch, Ray) where fork can deadlock.
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(tasks))) as pool:
                _collect(pool.imap_unordered(_generate_range, tasks), images, labels, bar)
    return images, labels


def _collect(results, images: np.ndarray, labels: np.ndarray, bar: tqdm) -> None:
    """Copy workers' chunks into the output arrays, advancing the progress bar."""
    for start, chunk_images, chunk_labels in results:
        images[start : start + len(chunk_images)] = chunk_images
        labels[start : start + len(chunk_labels)] = chunk_labels
        bar.update(len(chunk_images))


def split_seed(seed: int, split: str) -> int:
    """Return the generator seed of a split: train and test never share images."""
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"split={split!r}: allowed are {sorted(SPLIT_SEED_OFFSET)}")
    return 2 * seed + SPLIT_SEED_OFFSET[split]


def cache_path(
    root: str | os.PathLike, n_digits: int, n_images: int, seed: int, split: str
) -> Path:
    """Return the cache file of a generated split, named by all its parameters."""
    name = f"digitclutter{n_digits}-{split}-{n_images}-seed{seed}-{GENERATOR_VERSION}.npz"
    return Path(root) / "digitclutter" / name


def _read_cache(path: Path, n_digits: int, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the arrays of a cache file, or raise ValueError if it is damaged."""
    with np.load(path, allow_pickle=False) as stored:
        images, labels = stored["images"], stored["labels"]
    if images.shape != (n_images, IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"images have shape {images.shape} and dtype {images.dtype}")
    if labels.shape != (n_images, n_digits) or labels.dtype != np.int64:
        raise ValueError(f"labels have shape {labels.shape} and dtype {labels.dtype}")
    return images, labels


def _try_cache(path: Path, n_digits: int, n_images: int, warn: bool):
    """Return the cached (images, labels), or None if the file is missing or damaged."""
    if not path.exists():
        return None
    try:
        return _read_cache(path, n_digits, n_images)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        if warn:
            message = f"damaged Digitclutter cache {path} ({error}); regenerating it"
            warnings.warn(message, stacklevel=3)
        return None


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on path + ".lock": one process generates, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_generate(
    root: str | os.PathLike,
    n_digits: int,
    n_images: int,
    seed: int,
    split: str,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) of a split from the cache under root, generating it if missing.

    A damaged cache file is regenerated with a warning naming it: it is derived data, so the
    generator rebuilds it exactly. Concurrent callers (trials starting together) generate once.
    """
    path = cache_path(root, n_digits, n_images, seed, split)
    cached = _try_cache(path, n_digits, n_images, warn=True)
    if cached is not None:
        return cached
    with _exclusive(path):
        # Another process may have written it while this one waited for the lock.
        cached = _try_cache(path, n_digits, n_images, warn=False)
        if cached is not None:
            return cached
        log.info("generating %d Digitclutter-%d %s images: %s", n_images, n_digits, split, path)
        images, labels = generate(n_digits, n_images, split_seed(seed, split), workers)
        # Atomic: a reader never sees a half-written file.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            try:
                np.savez(tmp, images=images, labels=labels)
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, path)
    return images, labels
