"""Soft gradient coupling of the residual blocks of each stage (paper eq. 1-2; docs/method.md).

After `loss.backward()` and before `optimizer.step()`, every gradient that the blocks of a
stage share by position is pulled towards a kernel-weighted mean over the blocks:

    g_t <- (1 - coupling) * g_t + coupling * sum_u K[t,u] g_u / sum_u K[t,u]

This is linear in the stacked gradients, so it is one matrix product with a fixed mixing
matrix M = (1 - coupling) I + coupling * K / rowsum(K). Stages with the same N (all stages of
the project's ResNet) lay the gradients of every stage and every position side by side in one
[N, P] matrix, mixed by a single matmul; a network whose stages differ in N (a torchvision
ResNet: resnet50 has 2, 3, 5, 2 shape-preserving blocks) gets one such product per N.

The model is any `models.staged.StagedNetwork`: its `stage_blocks()` are the coupled blocks and
its `block_parameters()` the positions they share.
"""

from __future__ import annotations

import torch
from torch import nn

from models.resnet import BLOCK_PARAMETERS  # re-exported: the project ResNet's positions
from models.staged import as_staged, block_counts
from pipeline.config import CouplingSection


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


class _Group:
    """The stages of one N: their mixing matrix and, per coupled block, its parameters."""

    def __init__(
        self,
        stages: list[list[nn.Module]],
        names: tuple[str, ...],
        settings: CouplingSection,
    ) -> None:
        num_blocks, first_coupled = len(stages[0]), settings.first_coupled
        # Only the coupled rows need mixing; uncoupled blocks are never touched, so their
        # gradients stay bit-identical.
        full = mixing_matrix(
            num_blocks, settings.lam, settings.kernel, settings.bandwidth, first_coupled
        )
        self.mixing = full[first_coupled:, first_coupled:].contiguous()
        self._mixing_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        # rows[c] = the parameters of coupled block first_coupled + c in one fixed order
        # (stage, position), so that row c of the stacked [N, P] gradients is that block's.
        coupled_blocks = [blocks[first_coupled:] for blocks in stages]
        self.rows: list[list[nn.Parameter]] = [
            [blocks[c].get_parameter(name) for blocks in coupled_blocks for name in names]
            for c in range(num_blocks - first_coupled)
        ]

    def _mixing_for(self, reference: torch.Tensor) -> torch.Tensor:
        key = (reference.device, reference.dtype)
        if key not in self._mixing_cache:
            self._mixing_cache[key] = self.mixing.to(device=reference.device, dtype=reference.dtype)
        return self._mixing_cache[key]

    def apply(self) -> None:
        """Replace each coupled block's gradient by its row of M times the stacked gradients."""
        if len(self.rows) < 2:
            return  # one coupled block: nothing to mix
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


class GradientCoupler:
    """Rewrites the blocks' gradients in place: `coupler.apply()` after backward, before step."""

    def __init__(self, model: nn.Module, settings: CouplingSection) -> None:
        network = as_staged(model, "gradient coupling")
        stages = [list(blocks) for blocks in network.stage_blocks()]
        sizes = block_counts(network)
        if not stages or min(sizes) == 0:
            raise ValueError(
                f"model {type(model).__name__} has stages of {sizes} blocks: none to couple"
            )
        # The settings checked their own ranges; only the model can say how many blocks exist.
        if len(set(sizes)) == 1:
            allowed = f"allowed is 0..{sizes[0] - 1} for a model of {sizes[0]} blocks per stage"
        else:
            allowed = (
                f"allowed is 0..{min(sizes) - 1}: this model's stages have {sizes} blocks, "
                "and every stage needs a coupled block"
            )
        settings.check_first_coupled(min(sizes), allowed)
        self.coupling = settings.lam
        names = network.block_parameters()
        self.groups = [
            _Group([blocks for blocks in stages if len(blocks) == n], names, settings)
            for n in sorted(set(sizes))
        ]

    @torch.no_grad()
    def apply(self) -> None:
        """Replace each coupled block's gradient by its row of M times the stacked gradients."""
        if self.coupling == 0.0:
            return  # nothing to mix: leave every gradient bit-identical
        for group in self.groups:
            group.apply()


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
