"""Pathfinder generator: labels by pixel connectivity, balance, determinism, statistics, cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

from pipeline import pathfinder as pf

EIGHT_CONNECTED = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def sets() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Return 48 images and labels (seed 5) per difficulty, generated once for the module."""
    return {n: pf.generate(n, 48, seed=5, workers=1, progress=False) for n in pf.CONTOUR_LENGTHS}


def joined(image: np.ndarray, markers: np.ndarray) -> tuple[bool, int]:
    """Return (the two marker centres lie in one 8-connected ink component, number of them).

    Reads only the pixels and the marker positions: ink is every pixel above the background.
    """
    components, count = ndimage.label(image > pf.BACKGROUND, structure=EIGHT_CONNECTED)
    first, second = (components[int(y), int(x)] for y, x in markers)
    assert first > 0 and second > 0, "a marker centre is not on ink"
    return bool(first == second), count


def test_images_and_labels_have_the_promised_shapes(sets):
    for n, (images, labels) in sets.items():
        assert images.shape == (48, 32, 32) and images.dtype == np.uint8
        assert labels.shape == (48,) and labels.dtype == np.int64
        assert set(np.unique(labels).tolist()) == {0, 1}
        # A 1 px frame of background on every side (the padding).
        frame = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]])
        assert not frame.any(), n
    assert pf.DATASETS == ("pathfinder-6", "pathfinder-9", "pathfinder-14")


def test_label_is_pixel_connectivity_of_the_markers(sets):
    # Independent of the generator's label: flood-fill the ink and ask whether both marker
    # centres are in one component; the generator's metadata only says where the markers are.
    for n, (images, labels) in sets.items():
        for index in range(len(images)):
            sample = pf.sample_image(n, 5, index)
            np.testing.assert_array_equal(sample.image, images[index])
            connected, components = joined(images[index], sample.markers)
            assert connected == bool(labels[index]), (n, index)
            # Objects never touch: one component per contour (markers sit on their contour).
            assert components == pf.contours_per_image(n), (n, index)
            # The markers are the brightest ink: a disc of radius 1.5 covers its centre pixel.
            for y, x in sample.markers:
                assert images[index][int(y), int(x)] == 255


def test_markers_sit_on_contour_ends_and_differ_only_in_which_end():
    for n in pf.CONTOUR_LENGTHS:
        for index in range(6):
            sample = pf.sample_image(n, 5, index)
            starts, ends = sample.tips[:, 0], sample.tips[:, 1]
            np.testing.assert_array_equal(sample.markers[0], starts[sample.marked_target])
            other = sample.marked_target if sample.label else 1 - sample.marked_target
            np.testing.assert_array_equal(sample.markers[1], ends[other])
            # The two contours start SEED_DISTANCE apart (each snapped to the nearest subpixel).
            gap = np.hypot(*(starts[0] - starts[1]))
            assert abs(gap - pf.SEED_DISTANCE) <= 2**0.5 / pf.SUPERSAMPLE
            # Marker distance is no cue: the positive's and the negative's agree to a tolerance.
            start = starts[sample.marked_target]
            same = np.hypot(*(ends[sample.marked_target] - start))
            other = np.hypot(*(ends[1 - sample.marked_target] - start))
            assert abs(same - other) <= pf.MARKER_DISTANCE_TOLERANCE + 1e-9


def test_classes_are_exactly_balanced_in_every_even_prefix():
    labels = np.array([pf.label_of(9, 3, i) for i in range(400)])
    pairs = labels.reshape(-1, 2)
    assert (pairs.sum(axis=1) == 1).all()  # each pair (2j, 2j + 1): one of each
    assert 60 < pairs[:, 0].sum() < 140  # ... in a random order
    _, generated = pf.generate(6, 10, seed=3, workers=1, progress=False)
    assert generated.sum() == 5


def test_same_seed_same_bytes_whatever_the_workers():
    one, labels_one = pf.generate(9, 16, seed=7, workers=1, progress=False)
    again, labels_again = pf.generate(9, 16, seed=7, workers=1, progress=False)
    two, labels_two = pf.generate(9, 16, seed=7, workers=2, progress=False)
    assert one.tobytes() == again.tobytes() == two.tobytes()
    np.testing.assert_array_equal(labels_one, labels_again)
    np.testing.assert_array_equal(labels_one, labels_two)
    # Image i depends only on (seed, L, i): a shorter set is a prefix of a longer one.
    prefix, prefix_labels = pf.generate(9, 5, seed=7, workers=1, progress=False)
    np.testing.assert_array_equal(prefix, one[:5])
    np.testing.assert_array_equal(prefix_labels, labels_one[:5])
    other, _ = pf.generate(9, 16, seed=8, workers=1, progress=False)
    assert not np.array_equal(other, one)


def test_longer_contours_more_ink_and_the_classes_alike(sets):
    mean_ink = {}
    for n, (images, labels) in sets.items():
        ink = images.reshape(len(images), -1).mean(axis=1)  # grey level per image
        mean_ink[n] = ink.mean()
        # Every image holds the same contours and paddles: ink varies little between images ...
        assert ink.std() < 0.1 * ink.mean(), n
        # ... and not with the label (same scenes, only the second marker's end differs).
        positive, negative = ink[labels == 1].mean(), ink[labels == 0].mean()
        assert abs(positive - negative) < 0.05 * mean_ink[n], n
        inked = (images > 0).mean()
        assert 0.08 < inked < 0.35, (n, inked)
        # Anti-aliased: the block averages leave many grey levels.
        assert len(np.unique(images)) > 30, n
    # 32, 36 and 48 paddles for L = 6, 9, 14 (targets and distractors), two markers each.
    assert mean_ink[6] < mean_ink[9] < mean_ink[14]
    assert mean_ink[14] > 1.2 * mean_ink[6]


def test_cached_paddles_and_discs_match_drawing_on_the_whole_canvas():
    # The templates are drawn once per direction and subpixel phase; drawn directly on the
    # 256x256 canvas, a subpixel is ink iff its centre is in the paddle's rectangle / the disc.
    size, s = pf.CANVAS_SIZE, pf.SUPERSAMPLE
    centres = (np.arange(size) + 0.5) / s
    dy, dx = centres[:, None], centres[None, :]
    rng = np.random.default_rng(0)
    for _ in range(12):
        y8, x8 = (int(v) for v in rng.integers(8 * s, 24 * s, size=2))
        step = int(rng.integers(pf.ANGLE_STEPS))
        angle = 2 * np.pi * step / pf.ANGLE_STEPS
        ry, rx = dy - y8 / s, dx - x8 / s
        along = ry * np.sin(angle) + rx * np.cos(angle)
        across = ry * np.cos(angle) - rx * np.sin(angle)
        paddle = (along >= 0) & (along <= pf.PADDLE_LENGTH)
        paddle &= np.abs(across) <= pf.PADDLE_THICKNESS / 2
        disc = ry**2 + rx**2 <= pf.MARKER_RADIUS**2
        for stroke, direct in (
            (pf.paddle_stroke(y8, x8, step), paddle),
            (pf.disc_stroke(y8, x8), disc),
        ):
            canvas = np.zeros((size, size), bool)
            ink = np.unpackbits(stroke.template.ink, axis=1).astype(bool)
            canvas[stroke.row * s : stroke.row * s + len(ink), stroke.col * s :][
                :, : ink.shape[1]
            ] = ink
            np.testing.assert_array_equal(canvas, direct)
            # ... and the image of the stroke is the block average of that canvas.
            covered = direct.reshape(32, s, 32, s).mean(axis=(1, 3))
            expected = np.rint(255 * np.minimum(1, pf.INK_GAIN * covered)).astype(np.uint8)
            np.testing.assert_array_equal(pf.render([stroke]), expected)


def test_the_continuity_prior_allows_turns_up_to_90_degrees():
    turns = pf._TURN_TABLE * 360.0 / pf.ANGLE_STEPS
    assert np.abs(turns).max() <= 90.0
    assert 15.0 < np.abs(turns).mean() < 35.0  # cos^2 on +-90 deg: mean |turn| ~ 25 deg
    assert pf._GREY[0] == pf.BACKGROUND and pf._GREY[1] > 0 and pf._GREY[-1] == 255


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="contour_length=7"):
        pf.generate(7, 4, seed=0)
    with pytest.raises(ValueError, match="workers=0"):
        pf.generate(6, 4, seed=0, workers=0)
    with pytest.raises(ValueError, match="n_images=-1"):
        pf.generate(6, -1, seed=0)
    with pytest.raises(ValueError, match="split='val'"):
        pf.load_or_generate("unused-root", 6, 4, seed=0, split="val")


def test_cache_is_read_back_not_regenerated(tmp_path, monkeypatch):
    images, labels = pf.load_or_generate(tmp_path, 6, 8, seed=0, split="train", workers=1)
    path = pf.cache_path(tmp_path, 6, 8, seed=0, split="train")
    assert path.parent == tmp_path / "pathfinder" and path.exists()
    assert pf.GENERATOR_VERSION in path.name and "-8-" in path.name and "pathfinder6" in path.name
    written = path.stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated although the cache file is there")

    monkeypatch.setattr(pf, "generate", no_generation)
    again, labels_again = pf.load_or_generate(tmp_path, 6, 8, seed=0, split="train", workers=1)
    assert again.tobytes() == images.tobytes()
    np.testing.assert_array_equal(labels_again, labels)
    assert path.stat().st_mtime_ns == written
    monkeypatch.undo()
    # The test split has its own seed, so other images; no temporary files are left behind.
    test_images, _ = pf.load_or_generate(tmp_path, 6, 8, seed=0, split="test", workers=1)
    assert not np.array_equal(test_images, images)
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == sorted(
        [path.name, pf.cache_path(tmp_path, 6, 8, 0, "test").name]
    )


def test_damaged_cache_is_regenerated_with_a_warning_naming_it(tmp_path):
    # Digitclutter's rule (pipeline/generated.py): a damaged file is not used but regenerated.
    images, labels = pf.load_or_generate(tmp_path, 6, 6, seed=0, split="train", workers=1)
    path = pf.cache_path(tmp_path, 6, 6, seed=0, split="train")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match=str(path)):
        again, _ = pf.load_or_generate(tmp_path, 6, 6, seed=0, split="train", workers=1)
    assert again.tobytes() == images.tobytes()
    assert path.read_bytes() == data  # rewritten as generated

    # A readable file whose arrays are not the ones written: the checksum tells.
    changed = images.copy()
    changed[0, 5, 5] ^= 1
    np.savez(path, images=changed, labels=labels, sha256=np.array("0" * 64))
    with pytest.warns(UserWarning, match="checksum") as warned:
        again, _ = pf.load_or_generate(tmp_path, 6, 6, seed=0, split="train", workers=1)
    assert str(path) in str(warned[0].message)
    assert again.tobytes() == images.tobytes() and path.read_bytes() == data
    # Wrong shape (a file of another size under this name).
    np.savez(path, images=images[:3], labels=labels[:3], sha256=np.array("0" * 64))
    with pytest.warns(UserWarning, match="shape"):
        again, _ = pf.load_or_generate(tmp_path, 6, 6, seed=0, split="train", workers=1)
    assert again.tobytes() == images.tobytes() and path.read_bytes() == data
    assert not any(name.endswith(".tmp") for name in os.listdir(path.parent))
