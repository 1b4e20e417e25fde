"""The spectral bound L^ (docs/method.md) against dense Jacobians and dense SVDs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import bn_scale, dense_matrix

from models import ResNetConfig, build_model, converge_power_iteration
from models.resnet import ResidualBlock, Stage
from models.spectral import batchnorm_with_scale

MU = 0.95


def _random_block(channels: int, size: int, seed: int, proper: bool = False) -> ResidualBlock:
    """Return an eval-mode ICR/PCR block with non-trivial BN scales and converged vectors."""
    torch.manual_seed(seed)
    block = ResidualBlock(channels, size, normalised=True, proper=proper, mu=MU)
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        # Larger kernels than the default draw, so that the bound L^ > mu is active.
        block.conv1.weight.mul_(2.0)
        block.conv2.weight.mul_(2.0)
    block.eval()
    block.power_iterate(500)
    return block


@pytest.mark.parametrize(("channels", "size", "seed"), [(2, 6, 0), (3, 6, 1), (3, 8, 2)])
def test_each_factor_matches_dense_svd(channels: int, size: int, seed: int) -> None:
    block = _random_block(channels, size, seed)
    conv2 = dense_matrix(lambda v: F.conv2d(v, block.conv2.weight, padding=1), channels, size)
    bn_conv1 = dense_matrix(
        lambda v: (
            bn_scale(block.bn2) * F.conv2d(bn_scale(block.bn1) * v, block.conv1.weight, padding=1)
        ),
        channels,
        size,
    )
    with torch.no_grad():
        expected = (torch.linalg.matrix_norm(conv2, 2), torch.linalg.matrix_norm(bn_conv1, 2))
    estimated = block.lipschitz_factors()
    for est, exact in zip(estimated, expected, strict=True):
        assert float(est) == pytest.approx(float(exact), rel=1e-3)


def _jacobian_norm(function, z: torch.Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(
        lambda v: function(v.view_as(z)).flatten(), z.flatten()
    )
    return float(torch.linalg.matrix_norm(jacobian, 2))


@pytest.mark.parametrize(("channels", "size", "seed"), [(2, 6, 3), (3, 8, 4)])
def test_dense_jacobian_is_bounded_by_estimate_and_mu(channels: int, size: int, seed: int) -> None:
    block = _random_block(channels, size, seed)
    bound = float(block.lipschitz_bound())
    correction = max(bound / MU, 1.0)
    assert bound > MU, "the test needs a block whose bound is active"
    for draw in range(4):
        z = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(draw))
        normalised = _jacobian_norm(block.residual, z)
        # f = c * f~, so ||J_f|| = c * ||J_f~||.
        assert normalised * correction <= bound * (1 + 1e-3)
        assert normalised <= MU * (1 + 1e-3)


def test_correction_leaves_small_residuals_unchanged() -> None:
    block = _random_block(2, 6, 5)
    with torch.no_grad():
        block.conv2.weight.mul_(1e-4)
    block.power_iterate(200)
    assert float(block.lipschitz_bound()) < MU
    z = torch.randn(1, 2, 6, 6)
    plain = block.conv2(F.relu(block.bn2(block.conv1(F.relu(block.bn1(z))))))
    assert torch.allclose(block.residual(z), plain)


def test_gradient_flows_through_correction() -> None:
    block = _random_block(2, 6, 6)
    block.train()
    z = torch.randn(8, 2, 6, 6)
    block.power_iterate(50)
    vectors = {k: v.clone() for k, v in block.spectral.state_dict().items()}
    stats = {k: v.clone() for k, v in block.state_dict().items() if "running" in k}
    block.residual(z).sum().backward()
    with_correction = block.conv1.weight.grad.clone()
    # The same step with c held constant must give a different gradient.
    block.zero_grad()
    block.spectral.load_state_dict(vectors)
    block.load_state_dict(stats, strict=False)
    h = block.conv1(F.relu(block.bn1(z)))
    f = block.conv2(F.relu(block.bn2(h)))
    s1 = block.bn1.weight / torch.sqrt(z.var(dim=(0, 2, 3), unbiased=False) + block.bn1.eps)
    s2 = block.bn2.weight / torch.sqrt(h.var(dim=(0, 2, 3), unbiased=False) + block.bn2.eps)
    c = block.correction(s1, s2, 6).detach()
    assert float(c) > 1.0
    (f / c).sum().backward()
    assert not torch.allclose(with_correction, block.conv1.weight.grad)


def test_training_bound_uses_batch_statistics() -> None:
    block = _random_block(2, 6, 9)
    block.train()
    z = 3.0 * torch.randn(16, 2, 6, 6) + 1.0
    _, scale = batchnorm_with_scale(block.bn1, z)
    expected = block.bn1.weight / torch.sqrt(z.var(dim=(0, 2, 3), unbiased=False) + 1e-5)
    assert torch.allclose(scale, expected, rtol=1e-5)


def test_pcr_stage_converges_geometrically() -> None:
    torch.manual_seed(7)
    stage = Stage(channels=3, spatial_size=8, num_blocks=1, block="pcr", mu=MU)
    block = stage.blocks[0]
    with torch.no_grad():
        block.conv1.weight.mul_(3.0)
        block.conv2.weight.mul_(3.0)
    stage.eval()
    block.power_iterate(500)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        z = stage(x, [0])
        steps = []
        for _ in range(200):
            z_next = block(z, x)
            steps.append(float((z_next - z).norm()))
            z = z_next
    # Banach: successive differences shrink at least by the Lipschitz constant mu.
    for k in range(1, 200):
        if steps[k - 1] < 1e-5:
            break
        assert steps[k] <= MU * (1 + 1e-3) * steps[k - 1] + 1e-6
    assert steps[-1] < 1e-4 * steps[0]


def test_converge_power_iteration_reaches_dense_norm() -> None:
    torch.manual_seed(8)
    cfg = ResNetConfig(width=2, blocks_per_stage=2, block="icr")
    model = build_model(cfg, in_channels=1).eval()
    iterations = converge_power_iteration(model, tolerance=1e-6, max_iterations=1000)
    assert 0 < iterations <= 1000
    block = model.stages[2].blocks[1]  # 8 channels at 8x8
    conv2 = dense_matrix(lambda v: F.conv2d(v, block.conv2.weight, padding=1), 8, 8)
    with torch.no_grad():
        exact = float(torch.linalg.matrix_norm(conv2, 2))
    assert float(block.lipschitz_factors()[0]) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("block", ["icr", "pcr"])
def test_a_float64_network_trains_and_evaluates_in_float64(block: str) -> None:
    # model.double() is how a convergent network's numerics are checked against dense algebra.
    torch.manual_seed(9)
    model = build_model(ResNetConfig(width=2, blocks_per_stage=2, block=block)).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    model.train()
    model(x).sum().backward()  # batch statistics and one power-iteration step
    model.eval()
    assert model(x).dtype == torch.float64
    bounds = [b.lipschitz_bound() for stage in model.stages for b in stage.blocks]
    assert all(bound.dtype == torch.float64 for bound in bounds)


def test_the_float64_estimate_keeps_float64_accuracy() -> None:
    # At the exact top singular vector, ||A v|| is sigma to float64 round-off (~1e-16); a
    # float32 estimate would be off by ~1e-7.
    block = _random_block(3, 6, seed=4).double()
    conv2 = dense_matrix(lambda v: F.conv2d(v, block.conv2.weight, padding=1), 3, 6, torch.float64)
    with torch.no_grad():
        _, sigmas, right = torch.linalg.svd(conv2)
        block.spectral.v_conv2.copy_(right[0].view(1, 3, 6, 6))
    assert float(block.lipschitz_factors()[0]) == pytest.approx(float(sigmas[0]), rel=1e-12)
