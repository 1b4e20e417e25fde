"""Images/s of Digitclutter generation, and the projected time of a paper-scale training set.

Run: python benchmarks/digitclutter.py [--images 5000] [--digits 5] [--workers N]
Target: 100,000 Digitclutter-5 images in under 5 minutes. The plain way (drawing every digit's
text with Pillow on each 512x512 canvas) is timed on a few images for the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline import digitclutter as dc

PAPER_IMAGES = 100_000  # training images per Digitclutter set in the paper
TARGET_SECONDS = 300.0


def plain_image(n_digits: int, seed: int, index: int) -> np.ndarray:
    """Return one image drawn the plain way: Pillow text on a 512x512 layer per digit."""
    digits, offsets = dc.sample_image(n_digits, seed, index)
    return dc.downsample(dc.reference_canvas(digits, offsets))


def main() -> None:
    """Parse arguments, time generation and print images/s and the projected time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images to generate")
    parser.add_argument("--digits", type=int, default=5, help="digits per image (n)")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: all cores this may use)"
    )
    parser.add_argument("--plain-images", type=int, default=20, help="images drawn the plain way")
    args = parser.parse_args()
    workers = dc.default_workers() if args.workers is None else args.workers
    start = time.perf_counter()
    dc.generate(args.digits, args.images, seed=0, workers=workers)
    seconds = time.perf_counter() - start
    rate = args.images / seconds
    projected = PAPER_IMAGES / rate
    print(
        f"Digitclutter-{args.digits}: {args.images} images in {seconds:.1f} s on {workers} "
        f"workers = {rate:,.0f} images/s (including process start-up)"
    )
    verdict = "meets" if projected < TARGET_SECONDS else "MISSES"
    print(
        f"projected {PAPER_IMAGES:,} images: {projected:.0f} s = {projected / 60:.1f} min "
        f"({verdict} the {TARGET_SECONDS / 60:.0f} min target)"
    )
    if args.plain_images > 0:
        start = time.perf_counter()
        for index in range(args.plain_images):
            plain_image(args.digits, 0, index)
        plain_rate = args.plain_images / (time.perf_counter() - start)
        per_worker = rate / workers
        print(
            f"plain Pillow drawing per image, 1 process: {plain_rate:,.0f} images/s; cached "
            f"glyphs: {per_worker:,.0f} images/s per worker ({per_worker / plain_rate:.0f}x)"
        )


if __name__ == "__main__":
    main()
