"""Settings under which every trial would fail are refused by the launcher before anything
starts: exit status 2, one message naming the value and what is allowed, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_SWEEP, explain, launch, write_cifar

from pipeline.config import TrialConfig
from sweeps.preflight import UsageError, prepare_data


def refused(storage: Path, *args: str) -> str:
    """Run the launcher, check it refused with exit 2 and wrote nothing; return its stderr."""
    result = launch("smoke", *args, f"--storage={storage}")
    assert result.returncode == 2, explain(result)
    assert result.stderr.count("error:") == 1, result.stderr
    assert not storage.exists()
    return result.stderr


def test_batch_larger_than_the_training_split(tmp_path: Path, sweep_data_root: Path) -> None:
    error = refused(
        tmp_path / "results", *TINY_SWEEP, "optim.batch_size=600", f"--data-root={sweep_data_root}"
    )
    assert "optim.batch_size=600: larger than the 512 training images of digitclutter-3" in error
    assert "allowed are 1..512" in error


def test_batch_larger_than_the_subsampled_split(tmp_path: Path) -> None:
    # The smoke grid varies data.train_size itself, so this is checked on the launcher's
    # function: the same prepare_data that main() runs before anything starts.
    root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    config = TrialConfig().with_updates(
        {"data.dataset": "cifar10", "data.root": str(root), "data.train_size": 40}
    )
    prepare_data([config.with_updates({"optim.batch_size": 40})])  # fits exactly
    with pytest.raises(UsageError, match=r"optim\.batch_size=64: larger than the 40 training"):
        prepare_data([config.with_updates({"optim.batch_size": 64})])


def test_train_size_no_class_balanced_subset_reaches(tmp_path: Path) -> None:
    root = write_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=100)
    error = refused(
        tmp_path / "results",
        "data.dataset=cifar10",
        "data.train_size=300",
        "--limit=1",
        f"--data-root={root}",
    )
    assert "data.train_size for cifar10: train_size=300: allowed are 1..200" in error


def test_seed_out_of_range(tmp_path: Path) -> None:
    error = refused(tmp_path / "results", "run.seed=4294967296")
    assert "run.seed=4294967296: allowed are 0..4294967295" in error


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["optim.epochs=3"], "key=value overrides"),
        (["--seeds=2"], "--seeds"),
        (["--limit=1"], "--limit"),
        (["--experiment=other"], "--experiment"),
    ],
)
def test_resume_keeps_the_original_settings(tmp_path: Path, extra: list[str], named: str) -> None:
    error = refused(tmp_path / "results", "--resume", *extra)
    assert f"--resume with {named}: a resumed sweep keeps its original" in error


@pytest.mark.slow
def test_cuda_on_a_cluster_without_gpus(tmp_path: Path, sweep_data_root: Path) -> None:
    # Only the cluster knows it has no GPU: Ray starts, nothing else does.
    error = refused(
        tmp_path / "results",
        *TINY_SWEEP,
        "run.device=cuda",
        "--limit=2",
        f"--data-root={sweep_data_root}",
    )
    assert "run.device='cuda': the cluster has no GPUs" in error
