"""Datasets read from their real on-disk formats, and the on-device loader."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline.data import (
    DIGITCLUTTER_STATS,
    PATHFINDER_STATS,
    CorruptDatasetError,
    DatasetNotFoundError,
    DeviceLoader,
    crop_flip,
    load_dataset,
)
from pipeline.tasks import task_for

SHAPES = {"mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}


@pytest.fixture
def roots(cifar10_root, cifar100_root, mnist_root):
    """Return {dataset name: data root} of the tiny real-format datasets."""
    return {"cifar10": cifar10_root, "cifar100": cifar100_root, "mnist": mnist_root}


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_splits_have_the_promised_shapes_and_types(roots, name, split):
    dataset = load_dataset(name, roots[name], split)
    channels, classes = SHAPES[name]
    count = 200 if split == "train" else 100
    assert dataset.images.shape == (count, channels, 32, 32)
    assert dataset.images.dtype == torch.uint8 and dataset.images.device.type == "cpu"
    assert dataset.targets.shape == (count,) and dataset.targets.dtype == torch.int64
    assert dataset.targets.min() >= 0 and dataset.targets.max() < classes
    assert dataset.task == task_for(name) and (dataset.name, dataset.split) == (name, split)
    assert len(dataset.mean) == len(dataset.std) == channels == dataset.channels
    assert len(dataset) == count


def test_mnist_is_padded_with_two_zero_pixels(mnist_root):
    dataset = load_dataset("mnist", mnist_root, "test")
    with gzip.open(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(100, 28, 28)
    np.testing.assert_array_equal(dataset.images[:, 0, 2:30, 2:30].numpy(), raw)
    border = dataset.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.count_nonzero() == 0


def test_stats_are_the_training_splits_for_both_splits(cifar10_root):
    train = load_dataset("cifar10", cifar10_root, "train")
    test = load_dataset("cifar10", cifar10_root, "test")
    pixels = train.images.double().div(255).transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(train.mean, pixels.mean(1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(train.std, pixels.std(1, unbiased=False).numpy(), rtol=1e-9)
    assert test.mean == train.mean and test.std == train.std
    # Normalised training inputs have zero mean and unit spread per channel.
    inputs = torch.cat([x for x, _ in DeviceLoader(train, 64, "cpu", train=False, seed=0)])
    assert inputs.shape == (200, 3, 32, 32) and inputs.dtype == torch.float32
    torch.testing.assert_close(inputs.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(inputs.std((0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)


def test_train_size_is_a_seeded_class_balanced_subset(mnist_root):
    full = load_dataset("mnist", mnist_root, "train")
    subset = load_dataset("mnist", mnist_root, "train", train_size=55, seed=3)
    assert len(subset) == 55
    counts = torch.bincount(subset.targets, minlength=10)
    assert counts.sum() == 55 and set(counts.tolist()) == {5, 6}
    assert (counts == 6).sum() == 5  # the remainder spread over 5 classes
    assert subset.mean == full.mean  # normalised by the whole training split
    again = load_dataset("mnist", mnist_root, "train", train_size=55, seed=3)
    assert torch.equal(again.images, subset.images)
    other = load_dataset("mnist", mnist_root, "train", train_size=55, seed=4)
    assert not torch.equal(other.images, subset.images)
    with pytest.raises(ValueError, match="train_size=201"):
        load_dataset("mnist", mnist_root, "train", train_size=201)
    with pytest.raises(ValueError, match="class 1 has 2 examples, 4 needed"):
        data.balanced_subset(torch.tensor([0] * 10 + [1] * 2), 8, seed=0)
    # The test split is never subsampled.
    assert len(load_dataset("mnist", mnist_root, "test", train_size=55)) == 100


def test_unknown_dataset_and_split_are_named(cifar10_root):
    with pytest.raises(ValueError, match=r"'imagenet'.*cifar10"):
        load_dataset("imagenet", cifar10_root, "train")
    with pytest.raises(ValueError, match=r"'val'.*'train', 'test'"):
        load_dataset("cifar10", cifar10_root, "val")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(name, tmp_path, "train")
    message = str(caught.value)
    assert str(tmp_path) in message and "--download" in message
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("name", "damaged"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_3"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte.gz"),
        ("mnist", "MNIST/raw/train-labels-idx1-ubyte.gz"),
    ],
)
def test_a_truncated_file_is_named_in_the_error(roots, name, damaged):
    path = roots[name] / damaged
    contents = path.read_bytes()
    path.write_bytes(contents[: len(contents) // 2])
    with pytest.raises(CorruptDatasetError, match=str(path)):
        load_dataset(name, roots[name], "train")


def test_a_gzip_holding_the_wrong_header_is_named(mnist_root):
    path = mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + bytes(64))  # float idx, not uint8
    with pytest.raises(CorruptDatasetError, match=r"t10k-images.*magic"):
        load_dataset("mnist", mnist_root, "test")


def test_digitclutter_targets_are_multi_hot(tmp_path):
    dataset = load_dataset("digitclutter-3", tmp_path, "train", clutter_images=30)
    assert dataset.images.shape == (30, 1, 32, 32) and dataset.images.dtype == torch.uint8
    assert dataset.targets.shape == (30, 10) and dataset.targets.dtype == torch.uint8
    assert torch.equal(dataset.targets.sum(1), torch.full((30,), 3))
    assert dataset.task.multilabel and dataset.task.digits_per_image == 3
    assert (dataset.mean, dataset.std) == DIGITCLUTTER_STATS[3]
    test = load_dataset("digitclutter-3", tmp_path, "test", clutter_images=10)
    assert len(test) == 10 and (test.mean, test.std) == DIGITCLUTTER_STATS[3]
    assert (tmp_path / "digitclutter").is_dir()


@pytest.mark.parametrize("n_digits", sorted(DIGITCLUTTER_STATS))
def test_digitclutter_stats_match_fresh_images(n_digits):
    from pipeline import digitclutter

    images, _ = digitclutter.generate(n_digits, 1500, seed=123, workers=1, progress=False)
    pixels = images.astype(np.float64) / 255
    (mean,), (std,) = DIGITCLUTTER_STATS[n_digits]
    assert abs(pixels.mean() - mean) < 0.01 and abs(pixels.std() - std) < 0.01


def test_pathfinder_is_read_from_its_cache_with_class_index_targets(tmp_path, monkeypatch):
    from pipeline import pathfinder

    dataset = load_dataset("pathfinder-9", tmp_path, "train", pathfinder_images=20)
    assert dataset.images.shape == (20, 1, 32, 32) and dataset.images.dtype == torch.uint8
    assert dataset.targets.shape == (20,) and dataset.targets.dtype == torch.int64
    assert dataset.targets.sum() == 10  # an even set is balanced
    assert dataset.task == task_for("pathfinder-9") and dataset.task.num_classes == 2
    assert dataset.task.chance_error == 0.5 and not dataset.task.multilabel
    assert (dataset.mean, dataset.std) == PATHFINDER_STATS[9] and dataset.channels == 1
    path = pathfinder.cache_path(tmp_path, 9, 20, data.GENERATED_SEED, "train")
    assert path.exists()

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated although the cache file is there")

    monkeypatch.setattr(pathfinder, "generate", no_generation)
    again = load_dataset("pathfinder-9", tmp_path, "train", pathfinder_images=20)
    assert torch.equal(again.images, dataset.images) and torch.equal(again.targets, dataset.targets)
    images, labels = pathfinder.load_or_generate(tmp_path, 9, 20, data.GENERATED_SEED, "train")
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images))
    assert torch.equal(dataset.targets, torch.from_numpy(labels))
    # Never augmented: the marker-to-contour geometry is the label.
    assert not DeviceLoader(dataset, 4, "cpu", train=True).augment
    with pytest.raises(ValueError, match="pathfinder_images=0"):
        load_dataset("pathfinder-9", tmp_path, "test", pathfinder_images=0)


@pytest.mark.parametrize("contour_length", sorted(PATHFINDER_STATS))
def test_pathfinder_stats_match_fresh_images(contour_length):
    from pipeline import pathfinder

    images, _ = pathfinder.generate(contour_length, 200, seed=123, workers=1, progress=False)
    pixels = images.astype(np.float64) / 255
    (mean,), (std,) = PATHFINDER_STATS[contour_length]
    assert abs(pixels.mean() - mean) < 0.005 and abs(pixels.std() - std) < 0.01


def batches(loader):
    """Return one epoch of a loader as lists of inputs and targets."""
    pairs = list(loader)
    return [x for x, _ in pairs], [y for _, y in pairs]


def test_loader_order_is_seeded_and_changes_with_the_epoch(cifar10_root):
    dataset = load_dataset("cifar10", cifar10_root, "train")
    first = DeviceLoader(dataset, 64, "cpu", train=True, seed=5)
    second = DeviceLoader(dataset, 64, "cpu", train=True, seed=5)
    assert len(first) == 3  # 200 // 64: the partial batch is dropped
    inputs_a, targets_a = batches(first)
    inputs_b, targets_b = batches(second)
    assert len(inputs_a) == 3 and all(x.shape == (64, 3, 32, 32) for x in inputs_a)
    assert all(torch.equal(a, b) for a, b in zip(inputs_a, inputs_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(targets_a, targets_b, strict=True))
    assert first.state_dict() == {"epoch": 1}  # a full pass advances the epoch
    inputs_next, _ = batches(first)
    assert not torch.equal(inputs_next[0], inputs_a[0])
    resumed = DeviceLoader(dataset, 64, "cpu", train=True, seed=5)
    resumed.load_state_dict({"epoch": 1})
    assert torch.equal(batches(resumed)[0][0], inputs_next[0])
    resumed.set_epoch(0)
    assert torch.equal(batches(resumed)[0][0], inputs_a[0])
    other_seed = DeviceLoader(dataset, 64, "cpu", train=True, seed=6)
    assert not torch.equal(batches(other_seed)[1][0], targets_a[0])


def test_train_epoch_is_a_permutation_without_repeats(mnist_root):
    dataset = load_dataset("mnist", mnist_root, "train")
    # Tag each image by its index so batches can be traced back.
    tagged = data.Dataset(
        "mnist", "train", dataset.images, torch.arange(200), dataset.task, (0.0,), (1.0,)
    )
    loader = DeviceLoader(tagged, 32, "cpu", train=True, seed=0)
    seen = torch.cat([targets for _, targets in loader])
    assert len(seen) == 192 and len(set(seen.tolist())) == 192
    for inputs, targets in DeviceLoader(tagged, 32, "cpu", train=True, seed=0):
        torch.testing.assert_close(inputs, tagged.images[targets].float() / 255, rtol=0, atol=1e-6)


def test_eval_loader_keeps_every_example_in_order(cifar10_root):
    dataset = load_dataset("cifar10", cifar10_root, "test")
    loader = DeviceLoader(dataset, 64, "cpu", train=False, seed=0)
    assert len(loader) == math.ceil(100 / 64) == 2
    targets = torch.cat([y for _, y in loader])
    assert torch.equal(targets, dataset.targets)
    # No augmentation in eval: two passes are equal.
    first, second = batches(loader)[0], batches(loader)[0]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_cifar_training_batches_are_augmented_mnist_ones_are_not(cifar10_root, mnist_root):
    cifar = load_dataset("cifar10", cifar10_root, "train")
    augmented = DeviceLoader(cifar, 50, "cpu", train=True, seed=1)
    plain = DeviceLoader(cifar, 50, "cpu", train=True, seed=1, augment=False)
    assert augmented.augment and not plain.augment
    for (x_aug, y_aug), (x_plain, y_plain) in zip(augmented, plain, strict=True):
        assert x_aug.shape == x_plain.shape == (50, 3, 32, 32)
        assert torch.equal(y_aug, y_plain)  # same order: augmentation only moves pixels
        changed = (x_aug != x_plain).flatten(1).any(1)
        assert changed.float().mean() > 0.8  # 1/81 crops are centred, half of those flipped
    mnist = load_dataset("mnist", mnist_root, "train")
    assert not DeviceLoader(mnist, 50, "cpu", train=True, seed=1).augment
    assert not DeviceLoader(cifar, 50, "cpu", train=False, seed=1, augment=True).augment


def test_crop_flip_known_values():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32) % 251 + 1
    images = images.to(torch.uint8)
    centred = torch.tensor([[4, 4], [4, 4]])
    no_flip, flip = torch.tensor([False, False]), torch.tensor([True, True])
    assert torch.equal(crop_flip(images, centred, no_flip), images)
    assert torch.equal(crop_flip(images, centred, flip), images.flip(3))
    # Offset (0, 8): the image moves 4 px down and 4 px left, zeros come in at top and right.
    shifted = crop_flip(images, torch.tensor([[0, 8], [0, 8]]), no_flip)
    assert torch.equal(shifted[:, :, 4:, :28], images[:, :, :28, 4:])
    assert shifted[:, :, :4].count_nonzero() == 0 and shifted[:, :, :, 28:].count_nonzero() == 0


def test_loader_rejects_a_batch_larger_than_the_training_split(mnist_root):
    dataset = load_dataset("mnist", mnist_root, "train")
    with pytest.raises(ValueError, match="batch_size=256"):
        DeviceLoader(dataset, 256, "cpu", train=True, seed=0)
    assert len(DeviceLoader(dataset, 256, "cpu", train=False, seed=0)) == 1


def test_loader_leaves_the_thread_count_as_it_found_it(mnist_root):
    dataset = load_dataset("mnist", mnist_root, "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in DeviceLoader(dataset, 64, "cpu", train=True, seed=0):
            assert torch.get_num_threads() == 2  # the consumer's ops keep their threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
