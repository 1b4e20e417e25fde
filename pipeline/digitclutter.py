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
images of a set of N are the set of k. Parallel generation and the cache (with its rule for a
damaged file) are pipeline/generated.py's, shared with Pathfinder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline import generated

# Shared by the generated datasets (pipeline/generated.py); named here as they always were.
from pipeline.generated import default_workers as default_workers
from pipeline.generated import split_seed as split_seed
from vocabulary import IMAGE_SIZE

# Bump when the images or the cache file's contents change: it is part of every cache file's
# name. dc2: the file holds the arrays' SHA-256 (pipeline/generated.py); the images are dc1's.
GENERATOR_VERSION = "dc2"
CANVAS_SIZE = 512  # px, the rendering resolution
BLOCK = CANVAS_SIZE // IMAGE_SIZE  # 16 px per output pixel
BACKGROUND = 119  # grey level of the canvas
FONT_SIZE = 384  # px
OUTLINE_WIDTH = 10  # px of white outline outside the black digit
X_SCALE = 0.85  # horizontal squeeze of DejaVu Sans Bold towards Arial's proportions
X_OFFSET_RANGE = (-0.29, 0.29)  # fraction of the image size, from the centre
Y_OFFSET_MEAN = 0.076  # fraction of the image size, +y down
Y_OFFSET_RANGE = (-0.19, 0.19)  # fraction of the image size, around Y_OFFSET_MEAN

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
    return generated.generate_in_chunks(
        _generate_range,
        (n_digits, seed),
        n_images,
        (n_digits,),
        workers,
        f"digitclutter-{n_digits}",
        progress,
    )


def cache_path(
    root: str | os.PathLike, n_digits: int, n_images: int, seed: int, split: str
) -> Path:
    """Return the cache file of a generated split, named by all its parameters."""
    name = f"digitclutter{n_digits}-{split}-{n_images}-seed{seed}-{GENERATOR_VERSION}.npz"
    return Path(root) / "digitclutter" / name


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
    generator_seed = split_seed(seed, split)  # raises ValueError for an unknown split
    return generated.load_or_generate(
        cache_path(root, n_digits, n_images, seed, split),
        n_images,
        (n_digits,),
        lambda: generate(n_digits, n_images, generator_seed, workers),
        f"Digitclutter-{n_digits} {split}",
    )
