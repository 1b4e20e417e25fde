"""Pathfinder: are two circular markers the two ends of one curved contour? 32x32 grey images.

Task (Linsley et al. 2018, "Learning long-range spatial dependencies with horizontal gated
recurrent units"; the 32x32 sets of Long Range Arena, Tay et al. 2021): an image holds two
*target* contours and shorter *distractor* contours, each a chain of short line segments
("paddles"), and two markers (filled discs). Label 1: the markers sit on the two ends of the
same target contour; label 0: one sits on the start of one target contour, the other on the end
of the other target contour. ``pathfinder-6``, ``-9`` and ``-14`` have target contours of 6, 9
and 14 paddles (LRA's easy, intermediate and hard sets).

Our own generator, after the facts of the public one (drewlinsley/pathfinder, ``snakes2.py``, run
with LRA's 32x32 settings): window 32 px with 1 px padding, paddle length 2 px, thickness 0.5 px,
marker radius 1.5 px, continuity 1.0 (a turn t between consecutive paddles weighted by
cos^2(min(continuity * |t|, 90 deg))), the two target contours starting 7 px apart near the
centre and growing from there, ``20 // (L // 3)`` distractors of ``L // 3`` paddles, no single
paddle clutter, contours kept apart from each other and from themselves, and ink brightness
snake contrast 2 x paddle contrast 0.75 = INK_GAIN. Where ours differs, on purpose:

* Gaps. The public generator leaves 2 px between paddles (twice its 1 px margin): at 32x32 a
  contour is a dotted line. Here the gap is PADDLE_GAP = 0.75 px (< 1 px), so every contour is
  exactly one 8-connected component of ink and the label is a pixel-connectivity fact: the two
  marker centres lie in one 8-connected component of the nonzero pixels iff the label is 1. The
  gaps remain visible as dips in the grey level.
* Separation, checked at the output resolution. A pixel with any covered subpixel belongs to its
  object (a contour with its markers' discs); a paddle or disc is accepted only if none of its
  pixels is 8-adjacent to a pixel of another object, and a paddle only if it is 8-adjacent to
  the previous paddle of its contour and to none older than SELF_CLEARANCE_PADDLES before it (no
  loops). So background (exactly 0) separates objects by at least one pixel, and
  ``scipy.ndimage.label(image > 0, 8-connectivity)`` has exactly one component per contour, as
  tests/test_pathfinder.py checks on the final pixels without reading the generator's label.
* Labels do not shape the scene. Room for a marker (a disc) is claimed at both ends of both target
  contours before any distractor is placed; the scene (contours, which start is marked) is drawn
  from a random stream that never sees the label, which only decides whether the second marker
  goes on the marked contour's end or on the other contour's end. Both classes therefore have the
  same contours, paddles and ink (mean grey per class 15.58/15.58, 17.08/17.08, 21.57/21.57 of
  255 for L = 6, 9, 14 over 3,000 images each). The marked start is chosen, and target ends
  regrown when needed, so that the distances from it to both ends agree to
  MARKER_DISTANCE_TOLERANCE = 1 px: without this, a negative's markers are farther apart (the
  starts are 7 px apart) and the marker distance alone classifies 70 % of pathfinder-6 (AUC
  0.66); with it, AUC 0.50 on every difficulty.
* Complete scenes. Every image has exactly 2 target and ``20 // (L // 3)`` distractor contours,
  all of full length (a scene where one cannot be placed is redrawn; targets backtrack paddle by
  paddle first), so ink depends only on the difficulty: 32, 36 and 48 paddles for L = 6, 9, 14.
* Directions are multiples of 360/ANGLE_STEPS = 1.4 deg, turns drawn from the discretised
  cos^2 prior (the public generator samples a pixel circle); a turn whose paddle does not fit is
  redrawn (up to PADDLE_TRIES, then the contour backtracks). Paddle starts and marker centres
  are snapped to the subpixel grid (1/8 px).

Rendering: ink is decided on a 256x256 canvas, SUPERSAMPLE = 8 subpixels per output px along
each axis: a subpixel is ink if its centre is inside a paddle's 2 x 0.5 px rectangle or a
marker's disc. An output pixel is ``rint(255 * min(1, INK_GAIN * covered fraction))`` (block
averaging, like Digitclutter's 16x16 blocks): white ink on black (BACKGROUND 0); a 0.5 px line
across a pixel is ~190, a marker's centre pixel 255. Each paddle (per direction and subpixel
phase) and disc is drawn once per process and reused (at most 16,448 small templates, 1-2 s).

Determinism: image i's scene comes from ``np.random.default_rng([seed, L, i, 1])``, and the labels
of the pair (2j, 2j + 1), one positive and one negative in a random order, from
``np.random.default_rng([seed, L, j, 2])``. A seed gives the same bytes whatever the number of
workers or chunking, the first k images of a set of N are the set of k, and every even prefix is
exactly balanced (an odd one has one more image of one class).

Default sizes, vocabulary.PATHFINDER_IMAGES (data.pathfinder_train_images and
data.pathfinder_test_images): 100,000 training and 10,000 test images per difficulty, the
Digitclutter sets' sizes, so trials on either family see as many images per epoch. LRA's
Pathfinder-32 has 200,000 per difficulty (160k/20k/20k); half that keeps the one-off generation
under an hour on one core (whether the paper's ResNets learn pathfinder-14 from 100,000 images
is not yet measured). 10,000 test images measure an error near 50 % to +-1 % (two standard
errors). Speed, measured on a 2-core machine shared with other work: 125, 78 and 43 images/s on
one worker for L = 6, 9, 14 (226, 87 and 61 on two, the second core busy), so 100,000
pathfinder-14 images take ~40 min on one core and a few minutes on 16; generation happens once
per data root (the cache below).

Cache: ``<root>/pathfinder/pathfinder<L>-<split>-<N>-seed<seed>-<GENERATOR_VERSION>.npz``
(the data root of Digitclutter's cache), with images, labels and the SHA-256 of both, written
atomically under a file lock (concurrent trials generate once). The rule for a damaged file is
Digitclutter's (pipeline/generated.py, shared by both): a cache file that cannot be read, holds
other arrays or fails its checksum is not used but regenerated, with a warning naming it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import generated
from pipeline.generated import split_seed
from vocabulary import IMAGE_SIZE  # px, the output side (32)
from vocabulary import PATHFINDER as DATASETS  # the dataset names, "pathfinder-6", ...
from vocabulary import PATHFINDER_LENGTHS as CONTOUR_LENGTHS  # paddles per target contour

GENERATOR_VERSION = "pf1"  # bump when the images change: it is part of every cache file's name
NUM_CLASSES = 2  # 1: markers joined by one contour, 0: on two different contours
SUPERSAMPLE = 8  # subpixels per output px along each axis (ink decided on a 256x256 canvas)
CANVAS_SIZE = IMAGE_SIZE * SUPERSAMPLE  # 256 subpixels
PADDING = 1  # px: the outermost row and column on every side stay background (must be >= 1)
PADDLE_LENGTH = 2.0  # px, one straight piece of a contour
PADDLE_THICKNESS = 0.5  # px
PADDLE_GAP = 0.75  # px of arc between consecutive paddles (< 1 px keeps a contour 8-connected)
MARKER_RADIUS = 1.5  # px, the filled disc at a contour's end
CONTINUITY = 1.0  # turn t between paddles has probability ~ cos^2(min(CONTINUITY * |t|, pi/2))
ANGLE_STEPS = 256  # directions per full turn: paddle directions are multiples of 1.40625 deg
SEED_DISTANCE = 7.0  # px between the starting tips of the two target contours
SEED_BOX = (13.0, 19.0)  # px: x and y range of the first target contour's starting tip
MARKER_DISTANCE_TOLERANCE = 1.0  # px: a positive's and a negative's marker distance agree to this
DISTRACTOR_PADDLES = 20  # distractors per image: DISTRACTOR_PADDLES // (L // 3), of L // 3 paddles
INK_GAIN = 1.5  # grey level per covered fraction of a pixel, times 255, clipped at 255
BACKGROUND = 0  # grey level where there is no ink; any ink is brighter (>= 6)
SELF_CLEARANCE_PADDLES = 3  # a paddle may touch (8-adjacent) only its contour's last 3 paddles
PADDLE_TRIES = 16  # turns drawn for one paddle before the contour backtracks (or is given up)
BACKTRACKS = 80  # paddles the two target contours may take back before the scene is redrawn
DISTRACTOR_TRIES = 60  # starts drawn for all distractors of a scene before it is redrawn
SCENE_TRIES = 2_000  # scenes drawn for one image before generation fails (never seen)

_SCENE_STREAM, _LABEL_STREAM = 1, 2  # last word of the image's and the pair's rng seeds
_HALF = PADDLE_THICKNESS / 2.0
_HALF_GAP = PADDLE_GAP / 2.0
_SIN = [math.sin(2.0 * math.pi * k / ANGLE_STEPS) for k in range(ANGLE_STEPS)]
_COS = [math.cos(2.0 * math.pi * k / ANGLE_STEPS) for k in range(ANGLE_STEPS)]
# The continuity prior over turns of -ANGLE_STEPS/2 .. ANGLE_STEPS/2 - 1 steps, as a CDF.
_TURN_STEPS = np.arange(-ANGLE_STEPS // 2, ANGLE_STEPS // 2)
_TURN_CDF = np.cumsum(
    np.cos(np.minimum(CONTINUITY * np.abs(_TURN_STEPS) * 2 * np.pi / ANGLE_STEPS, np.pi / 2)) ** 2
)
_TURN_CDF /= _TURN_CDF[-1]
# Inverse CDF at 2^16 quantiles: a uniform integer below 2^16 picks a turn (in steps).
_TURN_TABLE = _TURN_STEPS[np.searchsorted(_TURN_CDF, (np.arange(2**16) + 0.5) / 2**16)]
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)
# Grey level of a pixel with 0..SUPERSAMPLE^2 covered subpixels.
_GREY = np.rint(
    255.0 * np.minimum(1.0, INK_GAIN * np.arange(SUPERSAMPLE**2 + 1) / SUPERSAMPLE**2)
).astype(np.uint8)


def distractors(contour_length: int) -> tuple[int, int]:
    """Return (number of distractor contours, paddles per distractor) of a difficulty."""
    length = contour_length // 3
    return DISTRACTOR_PADDLES // length, length


def contours_per_image(contour_length: int) -> int:
    """Return the number of contours in every image: 2 targets and the distractors."""
    return 2 + distractors(contour_length)[0]


def dataset_name(contour_length: int) -> str:
    """Return the dataset name of a difficulty, e.g. "pathfinder-14"."""
    _check_length(contour_length)
    return DATASETS[CONTOUR_LENGTHS.index(contour_length)]


@dataclass
class Sample:
    """One image and what it was drawn from (for tests and inspection)."""

    image: np.ndarray  # uint8 [32, 32]
    label: int  # 1: the markers are the two ends of one contour
    markers: np.ndarray  # float [2, 2]: (y, x) in px of the two marker centres
    tips: np.ndarray  # float [2, 2, 2]: target, (start, end), (y, x) in px
    marked_target: int  # 0 or 1: the target contour whose start carries a marker
    n_contours: int  # contours drawn (targets and distractors)


@dataclass(frozen=True, eq=False)
class _Template:
    """A paddle or disc drawn once per process for one subpixel phase (and direction).

    Its box of pixels starts (drow, dcol) from the pixel holding its anchor (a paddle's start, a
    disc's centre); offsets are flat indices (row * IMAGE_SIZE + col) from the box's corner.
    """

    drow: int
    dcol: int
    height: int  # px of the box
    width: int
    ink: np.ndarray  # uint8 [height * SUPERSAMPLE, width]: covered subpixels, 8 bits a byte
    support: np.ndarray  # int offsets of the pixels with any ink
    halo: np.ndarray  # int offsets of those pixels and their 8 neighbours
    probe: int  # offset of one inked pixel (tested first: most rejected paddles fail there)


_TEMPLATES: dict[tuple[int, ...], _Template] = {}  # per process, filled on first use
_PHASES = [(fy, fx) for fy in range(SUPERSAMPLE) for fx in range(SUPERSAMPLE)]


def _templates(
    keys: list[tuple[int, ...]], lo_hi: tuple[float, ...], probe: tuple[float, float], covered
) -> None:
    """Draw and cache the templates of one shape at all subpixel phases of its anchor.

    keys: the cache key of each phase in _PHASES order; lo_hi: the ink's extent (y0, y1, x0, x1)
    in px from the anchor; probe: (dy, dx) in px from the anchor of a point deep inside the ink;
    covered(dy, dx): bool ink at those offsets (px from the anchor, arrays [phase, row, col]).
    """
    y0, y1, x0, x1 = lo_hi
    # One box holding the shape at every phase: anchors in [0, 1) px of the anchor's pixel.
    top, left = math.floor(y0), math.floor(x0)
    rows = math.floor((SUPERSAMPLE - 1) / SUPERSAMPLE + y1) + 1 - top
    cols = math.floor((SUPERSAMPLE - 1) / SUPERSAMPLE + x1) + 1 - left
    phases = np.array(_PHASES, np.float64) / SUPERSAMPLE
    sub_y = top + (np.arange(rows * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    sub_x = left + (np.arange(cols * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    dy = sub_y[None, :, None] - phases[:, 0, None, None]
    dx = sub_x[None, None, :] - phases[:, 1, None, None]
    ink_all = covered(dy, dx)
    for key, (ay, ax), ink_box in zip(keys, phases.tolist(), ink_all, strict=True):
        drow, dcol = math.floor(ay + y0), math.floor(ax + x0)
        height, width = math.floor(ay + y1) + 1 - drow, math.floor(ax + x1) + 1 - dcol
        r, c = (drow - top) * SUPERSAMPLE, (dcol - left) * SUPERSAMPLE
        ink = ink_box[r : r + height * SUPERSAMPLE, c : c + width * SUPERSAMPLE]
        pixels = ink.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).any(axis=(1, 3))
        grown = np.zeros((height + 2, width + 2), bool)
        for i in range(3):
            for j in range(3):
                grown[i : i + height, j : j + width] |= pixels
        pixel_rows, pixel_cols = np.nonzero(pixels)
        support = pixel_rows * IMAGE_SIZE + pixel_cols
        pixel_rows, pixel_cols = np.nonzero(grown)
        halo = (pixel_rows - 1) * IMAGE_SIZE + (pixel_cols - 1)
        probe_row = math.floor(ay + probe[0]) - drow
        probe_col = math.floor(ax + probe[1]) - dcol
        if not pixels[probe_row, probe_col]:  # never: a subpixel's centre is within 0.09 px
            raise AssertionError(f"template {key}: probe pixel without ink")
        _TEMPLATES[key] = _Template(
            drow,
            dcol,
            height,
            width,
            np.packbits(ink, axis=1),
            support,
            halo,
            probe_row * IMAGE_SIZE + probe_col,
        )


def _paddle_templates(step: int) -> None:
    """Draw and cache the paddles in direction step, starting at every subpixel phase."""
    uy, ux = _SIN[step], _COS[step]
    ey, ex = PADDLE_LENGTH * uy, PADDLE_LENGTH * ux
    extent = (
        min(0.0, ey) - _HALF,
        max(0.0, ey) + _HALF,
        min(0.0, ex) - _HALF,
        max(0.0, ex) + _HALF,
    )

    def covered(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        along = dy * uy + dx * ux
        across = dy * ux - dx * uy
        return (along >= 0.0) & (along <= PADDLE_LENGTH) & (np.abs(across) <= _HALF)

    probe = (0.875 * ey, 0.875 * ex)  # 1.75 px along the paddle's axis
    _templates([(fy, fx, step) for fy, fx in _PHASES], extent, probe, covered)


def _disc_templates() -> None:
    """Draw and cache the marker discs centred at every subpixel phase."""
    r = MARKER_RADIUS

    def covered(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        return dy * dy + dx * dx <= r * r

    _templates(list(_PHASES), (-r, r, -r, r), (0.0, 0.0), covered)


class _Stroke(NamedTuple):
    """A template placed in the image: its box's top-left pixel (and its flat index)."""

    template: _Template
    row: int
    col: int
    base: int  # row * IMAGE_SIZE + col


def _snap(value: float) -> int:
    """Return a coordinate in px as the nearest whole number of subpixels."""
    return round(value * SUPERSAMPLE)


def _place(template: _Template, y8: int, x8: int) -> _Stroke | None:
    """Return the template anchored at subpixel (y8, x8), or None if it leaves the padding."""
    row = y8 // SUPERSAMPLE + template.drow
    col = x8 // SUPERSAMPLE + template.dcol
    limit = IMAGE_SIZE - PADDING
    if row < PADDING or col < PADDING or row + template.height > limit:
        return None
    if col + template.width > limit:
        return None
    return _Stroke(template, row, col, row * IMAGE_SIZE + col)


def paddle_stroke(y8: int, x8: int, step: int) -> _Stroke | None:
    """Return the paddle from subpixel (y8, x8) in direction step, or None if off the frame."""
    key = (y8 % SUPERSAMPLE, x8 % SUPERSAMPLE, step)
    template = _TEMPLATES.get(key)
    if template is None:
        _paddle_templates(step)
        template = _TEMPLATES[key]
    return _place(template, y8, x8)


def disc_stroke(y8: int, x8: int) -> _Stroke | None:
    """Return the marker disc centred at subpixel (y8, x8), or None if it leaves the frame."""
    key = (y8 % SUPERSAMPLE, x8 % SUPERSAMPLE)
    if key not in _TEMPLATES:
        _disc_templates()
    return _place(_TEMPLATES[key], y8, x8)


@dataclass
class _Scene:
    """The pixels each object owns while a scene is drawn, and every object's strokes."""

    # owner: 0 background, else the object (1, 2 targets, 3... distractors) whose ink or marker
    # room covers the pixel; order: the index of the object's latest paddle there. Flat [32*32].
    owner: np.ndarray = field(default_factory=lambda: np.zeros(IMAGE_SIZE**2, np.int16))
    order: np.ndarray = field(default_factory=lambda: np.zeros(IMAGE_SIZE**2, np.int16))
    # Object -> its strokes in order, each with what its pixels held before (pixels, owner,
    # order) and whether it is inked.
    claims: dict[int, list[tuple[_Stroke, tuple, bool]]] = field(default_factory=dict)


def _fits(scene: _Scene, stroke: _Stroke, obj: int, index: int | None) -> bool:
    """Return whether a stroke of object obj may be added: see the module docstring.

    index: the paddle's position in its contour (it must touch paddle index - 1 and no paddle
    older than index - SELF_CLEARANCE_PADDLES); None for a marker disc (only other objects count).
    """
    template, _, _, base = stroke
    probe = scene.owner[base + template.probe]
    if probe and probe != obj:
        return False
    halo = base + template.halo
    owner = scene.owner[halo]
    # Nonzero where another object owns the pixel (owner neither 0 nor obj).
    if ((owner - obj) * owner).any():
        return False
    if index is None:
        return True
    own = owner == obj
    order = scene.order[halo]
    if (own & (order < index - SELF_CLEARANCE_PADDLES)).any():
        return False
    return index == 0 or bool((own & (order == index - 1)).any())


def _claim(scene: _Scene, stroke: _Stroke, obj: int, index: int, ink: bool = True) -> None:
    """Give a stroke's pixels to object obj, marked with the paddle index; ink: draw it too."""
    pixels = stroke.base + stroke.template.support
    # What the pixels held before, so that the claim can be taken back (_unclaim_last).
    undo = (pixels, scene.owner[pixels], scene.order[pixels])
    scene.owner[pixels] = obj
    scene.order[pixels] = index
    scene.claims.setdefault(obj, []).append((stroke, undo, ink))


def _unclaim_last(scene: _Scene, obj: int) -> None:
    """Take back object obj's last stroke (no other object can have claimed its pixels since)."""
    _, (pixels, owner, order), _ = scene.claims[obj].pop()
    scene.owner[pixels] = owner
    scene.order[pixels] = order


def _remove(scene: _Scene, obj: int) -> None:
    """Take an unfinished contour out of the scene."""
    scene.owner[scene.owner == obj] = 0
    scene.claims.pop(obj, None)


class _Contour:
    """A contour being grown paddle by paddle from its starting tip; it can take paddles back."""

    def __init__(self, obj: int, y8: int, x8: int) -> None:
        self.obj = obj
        self.start = (y8, x8)  # subpixels
        # (tip in px, direction step) after each paddle: where the next one starts from and the
        # direction of the last one (the first paddle starts at the start in any direction).
        self.states: list[tuple[tuple[float, float], int]] = [
            ((y8 / SUPERSAMPLE, x8 / SUPERSAMPLE), 0)
        ]

    @property
    def paddles(self) -> int:
        """Return the number of paddles drawn."""
        return len(self.states) - 1

    @property
    def tip(self) -> tuple[float, float]:
        """Return the (y, x) in px where the last paddle ends (the start if none)."""
        return self.states[-1][0]

    def grow(self, scene: _Scene, rng: np.random.Generator) -> bool:
        """Add one paddle that fits, trying PADDLE_TRIES directions; return False if none did."""
        (ty, tx), last = self.states[-1]
        index = self.paddles
        if index == 0:
            steps = rng.integers(ANGLE_STEPS, size=PADDLE_TRIES)
        else:
            turns = _TURN_TABLE[rng.integers(2**16, size=PADDLE_TRIES)]
            steps = (last + turns) % ANGLE_STEPS
            # The bend is in the middle of the gap: half of it along the last paddle's
            # direction, half along the new one's.
            ty += _HALF_GAP * _SIN[last]
            tx += _HALF_GAP * _COS[last]
        limit = IMAGE_SIZE - PADDING
        # Each distinct direction once, in the order drawn (a repeat would not fit either).
        for step in dict.fromkeys(steps.tolist()):
            if index == 0:
                y8, x8 = self.start
            else:
                y8 = round((ty + _HALF_GAP * _SIN[step]) * SUPERSAMPLE)
                x8 = round((tx + _HALF_GAP * _COS[step]) * SUPERSAMPLE)
            # paddle_stroke, inlined: this loop is the generator's inner loop.
            key = (y8 % SUPERSAMPLE, x8 % SUPERSAMPLE, step)
            template = _TEMPLATES.get(key)
            if template is None:
                _paddle_templates(step)
                template = _TEMPLATES[key]
            row = y8 // SUPERSAMPLE + template.drow
            col = x8 // SUPERSAMPLE + template.dcol
            if row < PADDING or col < PADDING or row + template.height > limit:
                continue
            if col + template.width > limit:
                continue
            stroke = _Stroke(template, row, col, row * IMAGE_SIZE + col)
            if _fits(scene, stroke, self.obj, index):
                _claim(scene, stroke, self.obj, index)
                tip = (
                    y8 / SUPERSAMPLE + PADDLE_LENGTH * _SIN[step],
                    x8 / SUPERSAMPLE + PADDLE_LENGTH * _COS[step],
                )
                self.states.append((tip, step))
                return True
        return False

    def shrink(self, scene: _Scene) -> None:
        """Take back the last paddle."""
        _unclaim_last(scene, self.obj)
        self.states.pop()


def _mismatch(contours: list[_Contour], ends: dict, marked: int) -> float:
    """Return |positive's - negative's marker distance| (subpixels) if marked's start is marked."""
    sy, sx = contours[marked].start
    same, other = ends[contours[marked].obj], ends[contours[1 - marked].obj]
    return abs(math.hypot(same[0] - sy, same[1] - sx) - math.hypot(other[0] - sy, other[1] - sx))


def _grow_to(
    scene: _Scene, contours: list[_Contour], length: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int, _Stroke]], int] | None:
    """Grow the target contours in turn to `length` paddles and room for a marker at each end.

    The shortest contour grows next. One that cannot be extended, or whose end has no room for a
    marker, loses its last paddle and tries again from there. When both are complete, the start
    to carry a marker is chosen such that the distances from it to the two ends (a positive's and
    a negative's marker distance) agree to MARKER_DISTANCE_TOLERANCE; if neither start does, a
    random one of the two contours loses its last paddles (the more, the farther off). After
    BACKTRACKS such steps in all the scene is given up (None). Returns each end's disc centre
    (subpixels) and disc (claimed, not inked), and the marked contour (0 or 1).
    """
    backtracks = BACKTRACKS
    ends: dict[int, tuple[int, int, _Stroke]] = {}
    tolerance = MARKER_DISTANCE_TOLERANCE * SUPERSAMPLE
    while True:
        if len(ends) == len(contours):
            mismatch = [_mismatch(contours, ends, marked) for marked in (0, 1)]
            fitting = [marked for marked in (0, 1) if mismatch[marked] <= tolerance]
            if fitting:
                marked = fitting[int(rng.integers(len(fitting)))]
                return [ends[c.obj] for c in contours], marked
            contour = contours[int(rng.integers(2))]
            del ends[contour.obj]
            _unclaim_last(scene, contour.obj)  # its end's disc
            pitch = (PADDLE_LENGTH + PADDLE_GAP) * SUPERSAMPLE
            for _ in range(min(int(min(mismatch) / pitch), contour.paddles - 1)):
                contour.shrink(scene)
            grown = False
        else:
            contour = min((c for c in contours if c.obj not in ends), key=lambda c: c.paddles)
            if contour.paddles < length:
                grown = contour.grow(scene, rng)
            else:
                y8, x8 = _snap(contour.tip[0]), _snap(contour.tip[1])
                disc = disc_stroke(y8, x8)
                grown = False
                if disc is not None and _fits(scene, disc, contour.obj, None):
                    _claim(scene, disc, contour.obj, length, ink=False)
                    ends[contour.obj] = (y8, x8, disc)
                    grown = True
        if grown:
            continue
        if backtracks == 0:
            return None
        backtracks -= 1
        if contour.paddles > 0:
            contour.shrink(scene)


def _targets(
    scene: _Scene, contour_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[_Stroke], int] | None:
    """Draw the two target contours with room for markers at their four ends, or None.

    Returns the marker centres [target, (start, end), (y, x)] in px, the four discs (start 0,
    start 1, end 0, end 1), which are claimed but not inked, and the target whose start carries
    a marker (chosen without the label, see _grow_to).
    """
    y0, x0 = rng.uniform(*SEED_BOX, size=2)
    bearing = rng.uniform(-np.pi, np.pi)
    y1, x1 = y0 + SEED_DISTANCE * math.sin(bearing), x0 + SEED_DISTANCE * math.cos(bearing)
    starts = [(_snap(y0), _snap(x0)), (_snap(y1), _snap(x1))]
    discs = []
    for obj, (y8, x8) in enumerate(starts, start=1):
        disc = disc_stroke(y8, x8)
        if disc is None or not _fits(scene, disc, obj, None):
            return None
        # Index -1: the first paddles may touch their start's disc.
        _claim(scene, disc, obj, -1, ink=False)
        discs.append(disc)
    contours = [_Contour(obj, y8, x8) for obj, (y8, x8) in enumerate(starts, start=1)]
    grown = _grow_to(scene, contours, contour_length, rng)
    if grown is None:
        return None
    ends, marked = grown
    tips = np.array([[start, end[:2]] for start, end in zip(starts, ends, strict=True)], float)
    return tips / SUPERSAMPLE, discs + [end[2] for end in ends], marked


def _distractors(scene: _Scene, contour_length: int, rng: np.random.Generator) -> bool:
    """Add every distractor contour at full length; return False if they do not all fit."""
    count, length = distractors(contour_length)
    tries = DISTRACTOR_TRIES
    for obj in range(3, 3 + count):
        while True:
            if tries == 0:
                return False
            tries -= 1
            y, x = rng.uniform(PADDING, IMAGE_SIZE - PADDING, size=2)
            if scene.owner[int(y) * IMAGE_SIZE + int(x)]:
                continue  # on another contour: its first paddle cannot fit
            contour = _Contour(obj, _snap(y), _snap(x))
            if all(contour.grow(scene, rng) for _ in range(length)):
                break
            _remove(scene, obj)
    return True


def _check_length(contour_length: int) -> None:
    """Raise ValueError unless contour_length is one of CONTOUR_LENGTHS."""
    if contour_length not in CONTOUR_LENGTHS:
        raise ValueError(
            f"contour_length={contour_length!r}: allowed are {list(CONTOUR_LENGTHS)} "
            "(paddles per target contour)"
        )


def label_of(contour_length: int, seed: int, index: int) -> int:
    """Return image index's label: each pair (2j, 2j + 1) has one of each, in a random order."""
    pair = np.random.default_rng([seed, contour_length, index // 2, _LABEL_STREAM])
    first = int(pair.integers(2))
    return first if index % 2 == 0 else 1 - first


def sample_image(contour_length: int, seed: int, index: int) -> Sample:
    """Return image `index` of a set with this seed, and what it was drawn from."""
    _check_length(contour_length)
    rng = np.random.default_rng([seed, contour_length, index, _SCENE_STREAM])
    for _ in range(SCENE_TRIES):
        scene = _Scene()
        drawn = _targets(scene, contour_length, rng)
        if drawn is not None and _distractors(scene, contour_length, rng):
            break
    else:
        raise RuntimeError(
            f"pathfinder-{contour_length} seed {seed} image {index}: no scene fitted in "
            f"{SCENE_TRIES} tries"
        )
    tips, discs, marked = drawn  # the scene, drawn before (and whatever) the label
    label = label_of(contour_length, seed, index)
    second = marked if label == 1 else 1 - marked
    markers = np.stack([tips[marked, 0], tips[second, 1]])
    strokes = [s for claims in scene.claims.values() for s, _, ink in claims if ink]
    strokes += [discs[marked], discs[2 + second]]
    return Sample(render(strokes), label, markers, tips, marked, n_contours=len(scene.claims))


def render(strokes: list[_Stroke]) -> np.ndarray:
    """Return the 32x32 uint8 image of strokes: union of their subpixels, block-averaged."""
    # The canvas holds 8 subpixels of a row in a byte: one byte per pixel and subpixel row.
    canvas = np.zeros((CANVAS_SIZE, IMAGE_SIZE), np.uint8)
    for s in strokes:
        ink = s.template.ink
        r = s.row * SUPERSAMPLE
        canvas[r : r + ink.shape[0], s.col : s.col + ink.shape[1]] |= ink
    covered = _POPCOUNT[canvas].reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE).sum(axis=1)
    return _GREY[covered]


def _generate_range(args: tuple[int, int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Return (start, images, labels) of images start..stop-1 (a worker's task)."""
    contour_length, seed, start, stop = args
    images = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.empty(stop - start, np.int64)
    for row, index in enumerate(range(start, stop)):
        sample = sample_image(contour_length, seed, index)
        images[row], labels[row] = sample.image, sample.label
    return start, images, labels


def generate(
    contour_length: int,
    n_images: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 32, 32], labels int64 [N], 1: markers joined by one contour)."""
    _check_length(contour_length)
    return generated.generate_in_chunks(
        _generate_range,
        (contour_length, seed),
        n_images,
        (),
        workers,
        dataset_name(contour_length),
        progress,
    )


def cache_path(
    root: str | os.PathLike, contour_length: int, n_images: int, seed: int, split: str
) -> Path:
    """Return the cache file of a generated split, named by all its parameters."""
    name = f"pathfinder{contour_length}-{split}-{n_images}-seed{seed}-{GENERATOR_VERSION}.npz"
    return Path(root) / "pathfinder" / name


def load_or_generate(
    root: str | os.PathLike,
    contour_length: int,
    n_images: int,
    seed: int,
    split: str,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) of a split from the cache under root, generating it if missing.

    A damaged cache file is regenerated with a warning naming it. Concurrent callers (trials
    starting together) generate once.
    """
    _check_length(contour_length)
    generator_seed = split_seed(seed, split)  # raises ValueError for an unknown split
    return generated.load_or_generate(
        cache_path(root, contour_length, n_images, seed, split),
        n_images,
        (),
        lambda: generate(contour_length, n_images, generator_seed, workers),
        f"{dataset_name(contour_length)} {split}",
    )
