"""Digitclutter generator: its definition at 512x512, determinism, occlusion, and the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline import digitclutter as dc


def test_images_and_labels_have_the_promised_shapes():
    images, labels = dc.generate(3, 20, seed=0, workers=1, progress=False)
    assert images.shape == (20, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (20, 3) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    assert all(len(set(row)) == 3 for row in labels.tolist())  # n distinct digits


def test_images_are_the_block_mean_of_the_512_canvas():
    images, labels = dc.generate(5, 4, seed=3, workers=1, progress=False)
    for index in range(4):
        digits, offsets = dc.sample_image(5, 3, index)
        canvas = dc.render_canvas(digits, offsets)
        assert canvas.shape == (512, 512)
        block_mean = canvas.reshape(32, 16, 32, 16).mean(axis=(1, 3))
        np.testing.assert_array_equal(images[index], np.rint(block_mean).astype(np.uint8))
        np.testing.assert_array_equal(labels[index], digits)


def test_cached_glyphs_match_plain_pillow_drawing():
    # The plain way draws each digit's text on a full layer; ours pastes glyphs rendered once.
    # Resampling phases differ by under a pixel, so images agree to about a grey level.
    for index in range(3):
        digits, offsets = dc.sample_image(5, 0, index)
        ours = dc.downsample(dc.render_canvas(digits, offsets)).astype(int)
        plain = dc.downsample(dc.reference_canvas(digits, offsets)).astype(int)
        assert np.abs(ours - plain).mean() < 1.0
        assert np.abs(ours - plain).max() <= 12


def test_offsets_move_the_glyph_by_whole_pixels():
    centred = dc.render_canvas(np.array([8]), np.array([[0, 0]]))
    moved = dc.render_canvas(np.array([8]), np.array([[-40, 25]]))
    np.testing.assert_array_equal(moved[25:, : 512 - 40], centred[: 512 - 25, 40:])
    # At offset 0 the digit's layout box is centred: ink columns balanced around 256.
    columns = np.flatnonzero((centred != dc.BACKGROUND).any(axis=0))
    assert abs((columns[0] + columns[-1] + 1) / 2 - 256) <= 3


def test_same_seed_same_bytes_whatever_the_workers():
    one, labels_one = dc.generate(4, 24, seed=7, workers=1, progress=False)
    two, labels_two = dc.generate(4, 24, seed=7, workers=2, progress=False)
    assert one.tobytes() == two.tobytes()
    np.testing.assert_array_equal(labels_one, labels_two)
    # Image i depends only on (seed, n, i): a shorter set is a prefix of a longer one.
    prefix, _ = dc.generate(4, 5, seed=7, workers=1, progress=False)
    np.testing.assert_array_equal(prefix, one[:5])


def test_other_seeds_and_splits_give_other_images():
    base, _ = dc.generate(3, 8, seed=0, workers=1, progress=False)
    other, _ = dc.generate(3, 8, seed=1, workers=1, progress=False)
    assert not np.array_equal(base, other)
    assert dc.split_seed(0, "train") != dc.split_seed(0, "test")
    assert len({dc.split_seed(s, split) for s in range(5) for split in ("train", "test")}) == 10


def test_the_last_digit_occludes_everything_below_it():
    for index in range(5):
        digits, offsets = dc.sample_image(4, 11, index)
        full = dc.render_canvas(digits, offsets)
        alone = dc.render_canvas(digits[-1:], offsets[-1:])
        # Where the last glyph is opaque (pure black face or pure white outline), nothing shows
        # through from the digits drawn before it.
        opaque = (alone == 0) | (alone == 255)
        assert opaque.sum() > 20_000
        np.testing.assert_array_equal(full[opaque], alone[opaque])
        # ... and it is visible in the 32x32 image: dropping it changes the image.
        without_last = dc.render_canvas(digits[:-1], offsets[:-1])
        assert not np.array_equal(dc.downsample(full), dc.downsample(without_last))


def test_grey_background_black_digits_white_outlines():
    images, _ = dc.generate(3, 64, seed=2, workers=1, progress=False)
    background = (images == dc.BACKGROUND).mean()
    assert 0.3 < background < 0.7
    assert images.min() <= 30 and images.max() >= 200
    # More than a few distinct levels: averaging 16x16 blocks leaves edges grey.
    assert len(np.unique(images)) > 100


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_digits=11"):
        dc.generate(11, 4, seed=0)
    with pytest.raises(ValueError, match="workers=0"):
        dc.generate(3, 4, seed=0, workers=0)
    with pytest.raises(ValueError, match="split='val'"):
        dc.split_seed(0, "val")


def test_cache_returns_identical_bytes_and_is_keyed_by_parameters(tmp_path):
    images, labels = dc.load_or_generate(tmp_path, 3, 12, seed=0, split="train", workers=1)
    path = dc.cache_path(tmp_path, 3, 12, seed=0, split="train")
    assert path.parent == tmp_path / "digitclutter" and path.exists()
    assert dc.GENERATOR_VERSION in path.name and "12" in path.name
    written = path.stat().st_mtime_ns
    again, labels_again = dc.load_or_generate(tmp_path, 3, 12, seed=0, split="train", workers=1)
    assert again.tobytes() == images.tobytes()
    np.testing.assert_array_equal(labels_again, labels)
    assert path.stat().st_mtime_ns == written  # read, not regenerated
    test_images, _ = dc.load_or_generate(tmp_path, 3, 12, seed=0, split="test", workers=1)
    assert not np.array_equal(test_images, images)
    cached = sorted(p.name for p in path.parent.glob("*.npz"))
    assert cached == sorted([path.name, dc.cache_path(tmp_path, 3, 12, 0, "test").name])
    assert not list(path.parent.glob("*.tmp"))  # no temporary files left behind


def test_damaged_cache_is_regenerated_with_a_warning_naming_it(tmp_path):
    images, _ = dc.load_or_generate(tmp_path, 3, 6, seed=0, split="train", workers=1)
    path = dc.cache_path(tmp_path, 3, 6, seed=0, split="train")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=str(path)):
        again, _ = dc.load_or_generate(tmp_path, 3, 6, seed=0, split="train", workers=1)
    assert again.tobytes() == images.tobytes()
    assert path.read_bytes() == data
    assert not any(name.endswith(".tmp") for name in os.listdir(path.parent))
