"""The CUDA path: device loader, bf16 training, fp32 evaluation, curves, bound, coupling, a trial.

Marked `cuda` and skipped where no GPU is present; `benchmarks/gpu_check.py` (`make gpu-check`)
runs them on a GPU. Each compares the GPU against the CPU or an exact reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import bn_scale, dense_matrix, labelled_batches, trained_statistics_model

from models import ResNetConfig, build_model
from models.resnet import ResidualBlock
from pipeline.config import CouplingSection, TrialConfig
from pipeline.coupling import BLOCK_PARAMETERS, GradientCoupler
from pipeline.data import DeviceLoader, load_dataset
from pipeline.indices import naive_perturbation_curves, perturbation_curves
from pipeline.tasks import task_for
from pipeline.train import build_trial, evaluate, run_trial

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
CUDA = torch.device("cuda")

# A 2-epoch Digitclutter-3 trial: 6,000 training images, batch 32, a peak lr of 2.4 per 128
# examples (375 steps, as tests/test_train.py's 4 epochs of 3,000). In fp32 on a CPU the
# same trial ended at a test error of 0.666.
CLUTTER = {
    "data.dataset": "digitclutter-3",
    "data.clutter_train_images": 6000,
    "data.clutter_test_images": 500,
    "data.index_examples": 200,
    "model.width": 8,
    "model.blocks_per_stage": 2,
    "optim.batch_size": 32,
    "optim.lr": 2.4,
    "optim.epochs": 2,
    "run.device": "cuda",
    "run.extra_evaluations": 4,
}


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """Turn TF32 off: a comparison against fp32 or float64 references needs full fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cifar_trial_config(root: Path, **updates: object) -> TrialConfig:
    """Return a tiny CIFAR-10 trial on CUDA: width 8, N = 2, batch 32."""
    flat = {
        "data.dataset": "cifar10",
        "data.root": str(root),
        "model.width": 8,
        "model.blocks_per_stage": 2,
        "optim.batch_size": 32,
        "optim.lr": 0.05,
        "optim.epochs": 2,
        "optim.warmup_epochs": 0,
        "run.device": "cuda",
    }
    return TrialConfig.from_dict({**flat, **updates})


@pytest.mark.parametrize("train", [True, False])
def test_device_loader_on_cuda_gives_the_cpu_batches(cifar10_root: Path, train: bool) -> None:
    dataset = load_dataset("cifar10", cifar10_root, "train" if train else "test")
    cpu = DeviceLoader(dataset, 32, "cpu", train=train, seed=3)
    gpu = DeviceLoader(dataset, 32, CUDA, train=train, seed=3)
    for epoch in (0, 1):  # a second epoch: a new permutation and new crops and flips
        cpu.set_epoch(epoch)
        gpu.set_epoch(epoch)
        pairs = list(zip(cpu, gpu, strict=True))
        assert len(pairs) == len(cpu) > 1
        for (x_cpu, y_cpu), (x_gpu, y_gpu) in pairs:
            assert x_gpu.device.type == "cuda"
            assert x_gpu.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=0, atol=1e-6)
            assert torch.equal(y_gpu.cpu(), y_cpu)


@pytest.mark.parametrize("mode", ["eager", "cuda_graph"])
def test_bf16_training_steps_are_finite_and_lower_the_loss(cifar10_root: Path, mode: str) -> None:
    trial = build_trial(cifar_trial_config(cifar10_root), CUDA, step_mode=mode)
    assert trial.step.mixed_precision
    assert trial.model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    trial.model.head.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    inputs, targets = next(iter(trial.train_loader))
    losses = []
    trial.model.train()
    for _ in range(12):  # the same batch: the loss must fall (cuda_graph: 3 eager, 9 replays)
        loss, logits = trial.step(inputs, targets)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert set(dtypes) == {torch.bfloat16}  # autocast was on (a graph replay runs no hooks)
    assert logits.shape == (32, 10)


def test_evaluation_runs_in_fp32(cifar10_root: Path) -> None:
    trial = build_trial(cifar_trial_config(cifar10_root), CUDA, step_mode="eager")
    dtypes = []
    trial.model.head.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    loss, error = evaluate(trial)
    assert dtypes and set(dtypes) == {torch.float32}
    assert 0 <= error <= 1 and torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("dataset", ["cifar10", "digitclutter-3"])
@pytest.mark.parametrize("block", ["ordinary", "icr", "pcr"])
def test_cached_curves_equal_naive_curves_on_cuda(exact_fp32, block: str, dataset: str) -> None:
    task = task_for(dataset)
    model = trained_statistics_model(block)
    batches = labelled_batches(model, task)
    model = model.to(CUDA)
    batches = [(x.to(CUDA), y.to(CUDA)) for x, y in batches]
    examples = sum(len(y) for _, y in batches)
    naive = naive_perturbation_curves(model, batches, task, extra_evaluations=3)
    assert naive["error"].nunique() > 1, "degenerate curves would make this test vacuous"
    for budget in (None, 20):  # None: every branch of a batch at once on CUDA
        cached = perturbation_curves(
            model, batches, task, extra_evaluations=3, max_branch_examples=budget
        )
        # Branch batches of other sizes may pick other cuDNN kernels: at most one example of
        # the 33 may land on the other side of a decision in fp32, never more.
        pd.testing.assert_frame_equal(
            cached, naive, check_exact=False, rtol=0, atol=1.01 / examples
        )
        assert (cached["error"] != naive["error"]).sum() <= 1


@pytest.mark.parametrize(("channels", "size", "seed"), [(3, 6, 1), (4, 8, 2)])
def test_spectral_bound_on_cuda_matches_dense_svd(
    exact_fp32, channels: int, size: int, seed: int
) -> None:
    torch.manual_seed(seed)
    block = ResidualBlock(channels, size, normalised=True, mu=0.95)
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.running_var.uniform_(0.5, 2.0)
    block = block.to(CUDA).eval()
    block.power_iterate(500)  # the power iteration itself runs on the GPU
    cpu = block.to("cpu")
    conv2 = dense_matrix(lambda v: F.conv2d(v, cpu.conv2.weight, padding=1), channels, size)
    bn_conv1 = dense_matrix(
        lambda v: bn_scale(cpu.bn2) * F.conv2d(bn_scale(cpu.bn1) * v, cpu.conv1.weight, padding=1),
        channels,
        size,
    )
    with torch.no_grad():
        exact = [torch.linalg.matrix_norm(m.double(), 2) for m in (conv2, bn_conv1)]
    block = block.to(CUDA)
    estimated = block.lipschitz_factors()
    assert all(e.device.type == "cuda" for e in estimated)
    for est, ref in zip(estimated, exact, strict=True):
        assert float(est) == pytest.approx(float(ref), rel=1e-3)


def test_coupling_on_cuda_matches_the_formula(exact_fp32) -> None:
    torch.manual_seed(0)
    model = build_model(ResNetConfig(width=4, blocks_per_stage=3)).to(CUDA)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {
        (s, name): torch.stack([b.get_parameter(name).grad.double().cpu() for b in stage.blocks])
        for s, stage in enumerate(model.stages)
        for name in BLOCK_PARAMETERS
    }
    GradientCoupler(model, CouplingSection(lam=0.5)).apply()
    for (s, name), grads in before.items():
        expected = 0.5 * grads + 0.5 * grads.mean(dim=0, keepdim=True)
        got = torch.stack(
            [b.get_parameter(name).grad.double().cpu() for b in model.stages[s].blocks]
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block", ["ordinary", "icr"])
def test_full_coupling_keeps_recurrent_blocks_identical_on_cuda(block: str) -> None:
    torch.manual_seed(0)
    cfg = ResNetConfig(width=4, blocks_per_stage=3, block=block, recurrent_init=True)
    model = build_model(cfg).to(CUDA).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    coupler = GradientCoupler(model, CouplingSection(lam=1.0))
    for _ in range(10):
        x = torch.randn(16, 3, 32, 32, device=CUDA)
        y = torch.randint(0, 10, (16,), device=CUDA)
        optimiser.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        coupler.apply()
        optimiser.step()
    for stage in model.stages:
        first = dict(stage.blocks[0].named_parameters())
        for other in stage.blocks[1:]:
            for name, p in other.named_parameters():
                assert float((p - first[name]).abs().max()) <= 1e-6, name


def test_digitclutter_trial_on_cuda_ends_well_below_chance(tmp_path: Path) -> None:
    torch.cuda.reset_peak_memory_stats()
    config = TrialConfig.from_dict({**CLUTTER, "data.root": str(tmp_path / "data")})
    result = run_trial(config)
    assert torch.cuda.max_memory_allocated() > 0  # it ran on the GPU
    chance = task_for("digitclutter-3").chance_error  # 1 - 1/120
    # Guessing gets about 4 of 500 test images right (sd 2); 25 right is far beyond luck.
    assert result.metrics["final_test_error"] < 0.95, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["final_test_error"] < chance
    assert all(0 <= v <= 1 for v in result.indices.values()), result.indices
