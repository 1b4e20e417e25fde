"""Upper bound on the Lipschitz constant of a residual function (docs/method.md).

For f(z) = Conv2(ReLU(BN2(Conv1(ReLU(BN1(z)))))) the paper bounds

    L^(f) = ||Conv2||_2 * ||BN2 . Conv1 . BN1||_2,

where each factor is the spectral norm of the linear operator acting on the
stage's feature map (channels x H x W, zero padding), not of the reshaped kernel.
Both norms are estimated by power iteration with persistent vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def estimate_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Return the precision of the bound: float32, or the tensors' own if higher (float64)."""
    # bf16 under autocast is too coarse for a norm estimate; a float64 network (how its
    # numerics are checked against dense linear algebra) must not be cut down to float32.
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def batchnorm_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Return gamma / sqrt(running_var + eps): the per-channel scale BN applies in evaluation."""
    assert bn.running_var is not None, "the blocks' BN tracks running statistics"
    dtype = estimate_dtype(bn.weight, bn.running_var)
    return bn.weight.to(dtype) / torch.sqrt(bn.running_var.to(dtype) + bn.eps)


def batchnorm_with_scale(
    bn: nn.BatchNorm2d, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return BN(inputs) and the per-channel scale gamma / sqrt(var + eps) it applied."""
    # The shift of BN does not enter a Jacobian; only this diagonal scale does. In training
    # the forward pass normalises with the batch variance, so the bound must use it too.
    # native_batch_norm hands back the batch's 1/sqrt(var + eps) it computed anyway: a
    # separate variance pass costs three times BN's own forward on the CPU.
    if not bn.training:
        return bn(inputs), batchnorm_scale(bn)
    assert bn.num_batches_tracked is not None, "the blocks' BN tracks running statistics"
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    out, _, inverse_std = torch.native_batch_norm(
        inputs, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, momentum, bn.eps
    )
    # The batch statistics, like the power-iteration vectors, are constants of the bound:
    # its gradient flows through gamma and the convolution weights.
    dtype = estimate_dtype(bn.weight, inputs)
    return out, bn.weight.to(dtype) * inverse_std.detach().to(dtype)


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


class SpectralBound(nn.Module):
    """Power-iteration estimate of L^(f) for one residual block's bn1, conv1, bn2, conv2."""

    v_conv2: torch.Tensor
    v_bn_conv1: torch.Tensor

    def __init__(self, channels: int, spatial_size: int) -> None:
        super().__init__()
        self.channels = channels
        # Right singular vectors of the two operators; buffers so checkpoints keep them
        # and the coupled blocks of a recurrently initialised stage can share a start.
        shape = (1, channels, spatial_size, spatial_size)
        self.register_buffer("v_conv2", _normalise(torch.randn(shape)))
        self.register_buffer("v_bn_conv1", _normalise(torch.randn(shape)))

    def _resize(self, spatial_size: int) -> None:
        """Restart the vectors when the block sees a new feature-map size."""
        shape = (1, self.channels, spatial_size, spatial_size)
        device = self.v_conv2.device
        self.v_conv2 = _normalise(torch.randn(shape, device=device))
        self.v_bn_conv1 = _normalise(torch.randn(shape, device=device))

    @staticmethod
    def _conv(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, weight.to(v.dtype), padding=1)

    @staticmethod
    def _conv_adjoint(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(u, weight.to(u.dtype), padding=1)

    def _bn_conv(self, v: torch.Tensor, weight: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor):
        return s2.view(1, -1, 1, 1) * self._conv(s1.view(1, -1, 1, 1) * v, weight)

    def _bn_conv_adjoint(self, u, weight, s1, s2):
        return s1.view(1, -1, 1, 1) * self._conv_adjoint(s2.view(1, -1, 1, 1) * u, weight)

    @torch.no_grad()
    def iterate(
        self,
        conv1: torch.Tensor,
        conv2: torch.Tensor,
        s1: torch.Tensor,
        s2: torch.Tensor,
        iterations: int = 1,
    ) -> None:
        """Advance both persistent vectors by `iterations` power-iteration steps."""
        conv1, conv2, s1, s2 = conv1.detach(), conv2.detach(), s1.detach(), s2.detach()
        v2, v1 = self.v_conv2, self.v_bn_conv1
        for _ in range(iterations):
            v2 = _normalise(self._conv_adjoint(self._conv(v2, conv2), conv2))
            v1 = _normalise(self._bn_conv_adjoint(self._bn_conv(v1, conv1, s1, s2), conv1, s1, s2))
        self.v_conv2.copy_(v2)
        self.v_bn_conv1.copy_(v1)

    def factors(
        self, conv1: torch.Tensor, conv2: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (||Conv2||_2, ||BN2 . Conv1 . BN1||_2), differentiable in the weights."""
        # sigma = ||A v|| with v held constant: gradients flow through the operator only
        # (Miyato et al. 2018).
        sigma_conv2 = self._conv(self.v_conv2, conv2).norm()
        sigma_bn_conv1 = self._bn_conv(self.v_bn_conv1, conv1, s1, s2).norm()
        return sigma_conv2, sigma_bn_conv1
