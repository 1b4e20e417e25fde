"""Soft gradient coupling of the residual blocks of each stage (paper eq. 1-2; docs/method.md).

After `loss.backward()` and before `optimizer.step()`, every gradient that the blocks of a
stage share by position is pulled towards a kernel-weighted mean over the blocks:

    g_t <- (1 - coupling) * g_t + coupling * sum_u K[t,u] g_u / sum_u K[t,u]

This is linear in the stacked gradients, so it is one matrix product with a fixed mixing
matrix M = (1 - coupling) I + coupling * K / rowsum(K). All stages have the same N, so the
gradients of every stage and every position are laid side by side in one [N, P] matrix and
mixed by a single matmul.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import CouplingSection

# Parameters that every residual block holds at the same position (BN buffers are not coupled).
BLOCK_PARAMETERS = (
    "conv1.weight",
    "conv2.weight",
    "bn1.weight",
    "bn1.bias",
    "bn2.weight",
    "bn2.bias",
)


def coupling_kernel(
    num_blocks: int, kernel: str = "uniform", bandwidth: float | None = None
) -> torch.Tensor:
    """Return the [N, N] kernel K: ones (uniform) or max(0, 1 - |t-u|/h) (triangular)."""
    if kernel == "uniform":
        return torch.ones(num_blocks, num_blocks, dtype=torch.float64)
    h = num_blocks / 2 if bandwidth is None else float(bandwidth)
    index = torch.arange(num_blocks, dtype=torch.float64)
    distance = (index[:, None] - index[None, :]).abs()
    return (1.0 - distance / h).clamp(min=0.0)


def mixing_matrix(
    num_blocks: int,
    coupling: float,
    kernel: str = "uniform",
    bandwidth: float | None = None,
    first_coupled: int = 0,
) -> torch.Tensor:
    """Return the float64 [N, N] matrix M with coupled gradients = M @ stacked gradients."""
    mixing = torch.eye(num_blocks, dtype=torch.float64)
    # Blocks below first_coupled keep their own gradient (identity rows) and are left out
    # of the mean (their columns are cut from the kernel of the coupled rows).
    k = coupling_kernel(num_blocks, kernel, bandwidth)[first_coupled:, first_coupled:]
    k_normalised = k / k.sum(dim=1, keepdim=True)  # K[t,t] = 1, so no row sum is zero
    coupled = (1.0 - coupling) * torch.eye(len(k), dtype=torch.float64) + coupling * k_normalised
    mixing[first_coupled:, first_coupled:] = coupled
    return mixing


class GradientCoupler:
    """Rewrites the blocks' gradients in place: `coupler.apply()` after backward, before step."""

    def __init__(self, model: nn.Module, settings: CouplingSection) -> None:
        stages = getattr(model, "stages", None)
        if stages is None or len(stages) == 0:
            raise ValueError(f"model {type(model).__name__}: needs .stages with .blocks to couple")
        sizes = sorted({len(stage.blocks) for stage in stages})
        if len(sizes) != 1:
            raise ValueError(f"stages have {sizes} blocks: coupling needs the same N in each")
        num_blocks = sizes[0]
        # The settings checked their own ranges; only the model can say how many blocks exist.
        first_coupled = settings.first_coupled
        if first_coupled >= num_blocks:
            raise ValueError(
                f"coupling.first_coupled={first_coupled}: allowed is 0..{num_blocks - 1} "
                f"for a model of {num_blocks} blocks per stage"
            )
        self.coupling = settings.lam
        self.num_blocks = num_blocks
        # Only the coupled rows need mixing; uncoupled blocks are never touched, so their
        # gradients stay bit-identical.
        full = mixing_matrix(
            num_blocks, settings.lam, settings.kernel, settings.bandwidth, first_coupled
        )
        self.mixing = full[first_coupled:, first_coupled:].contiguous()
        self._mixing_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        # rows[c] = the parameters of coupled block first_coupled + c in one fixed order
        # (stage, position), so that row c of the stacked [N, P] gradients is that block's.
        coupled_blocks = [stage.blocks[first_coupled:] for stage in stages]
        self.rows: list[list[nn.Parameter]] = [
            [
                blocks[c].get_parameter(name)
                for blocks in coupled_blocks
                for name in BLOCK_PARAMETERS
            ]
            for c in range(num_blocks - first_coupled)
        ]

    def _mixing_for(self, reference: torch.Tensor) -> torch.Tensor:
        key = (reference.device, reference.dtype)
        if key not in self._mixing_cache:
            self._mixing_cache[key] = self.mixing.to(device=reference.device, dtype=reference.dtype)
        return self._mixing_cache[key]

    @torch.no_grad()
    def apply(self) -> None:
        """Replace each coupled block's gradient by its row of M times the stacked gradients."""
        if self.coupling == 0.0 or len(self.rows) < 2:
            return  # nothing to mix: leave every gradient bit-identical
        if all(p.grad is None for row in self.rows for p in row):
            return
        # A missing gradient (a block unused in this step) counts as zero in the mean; the block
        # still receives its coupled gradient, so lam = 1 keeps all blocks identical.
        for row in self.rows:
            for p in row:
                if p.grad is None and p.requires_grad:
                    p.grad = torch.zeros_like(p)
        grads = [[p.grad for p in row if p.grad is not None] for row in self.rows]
        if len({len(row) for row in grads}) != 1:
            raise ValueError("coupled blocks must all require gradients or all not")
        flat_grads = [g for row in grads for g in row]
        sizes = [g.numel() for g in grads[0]]
        stacked = flat_grads[0].new_empty(len(grads), sum(sizes))
        torch._foreach_copy_(_views(stacked, grads, sizes), flat_grads)
        mixed = self._mixing_for(stacked) @ stacked
        torch._foreach_copy_(flat_grads, _views(mixed, grads, sizes))


def _views(
    matrix: torch.Tensor, grads: list[list[torch.Tensor]], sizes: list[int]
) -> list[torch.Tensor]:
    """Return views into the rows of `matrix` shaped like each gradient, row by row."""
    return [
        piece.view(g.shape)
        for row, line in zip(grads, matrix, strict=True)
        for g, piece in zip(row, line.split(sizes), strict=True)
    ]


__all__ = ["BLOCK_PARAMETERS", "GradientCoupler", "coupling_kernel", "mixing_matrix"]
