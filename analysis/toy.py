"""The toy inverse problem of Fig 1: invert f(z) = (1.5 z1, 0.75 z2) iteratively or with tiny nets.

The error-corrective algorithm (paper, "ResNets can represent iterative computations") updates
z_i <- z_i - s_i eps_i (alpha_i z_i - x_i) from z = x. Three small networks learn the inverse
from x: a non-residual feedforward net, a ResNet and a recurrent ResNet (one block shared by all
steps); each encodes x into a hidden representation, runs `blocks` MLP blocks, and decodes z with
one linear read-out, so every intermediate representation can be read out (Fig 1b), a block can
be dropped (Fig 1c) and the last block applied again (Fig 1d). Training takes seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

NETWORKS = ("feedforward", "resnet", "recurrent")
METHODS = ("error-corrective", *NETWORKS)
LABELS = {
    "error-corrective": "error-corrective algorithm",
    "feedforward": "non-residual network",
    "resnet": "ResNet",
    "recurrent": "recurrent ResNet",
}


@dataclass(frozen=True)
class ToyConfig:
    """The toy problem and the training of its networks."""

    alphas: tuple[float, float] = (1.5, 0.75)  # forward model x_i = alpha_i z_i
    eps: tuple[float, float] = (0.3, 0.8)  # step sizes of the error-corrective algorithm
    blocks: int = 8  # residual (or plain) blocks of each network = trained number of steps
    hidden: int = 16  # width of the hidden representation
    inner: int = 32  # width of the hidden layer inside a block
    z_range: float = 1.5  # training latents z ~ U[-z_range, z_range]^2
    steps: int = 800  # Adam steps
    batch_size: int = 256  # latents per step
    lr: float = 3e-3  # Adam learning rate
    seed: int = 0  # weights and training latents
    dropped_block: int = 4  # Fig 1c: the 1-based block that is left out
    extra_evaluations: int = 8  # Fig 1d: extra applications of the last block
    example: tuple[float, float] = (1.0, 1.0)  # the latent z whose trajectories are drawn


def forward_model(z: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Return x = f(z) = (alpha_1 z_1, alpha_2 z_2) for z of shape [..., 2]."""
    return np.asarray(z, dtype=np.float64) * np.asarray(alphas, dtype=np.float64)


def error_corrective(
    x: np.ndarray, alphas: Sequence[float], eps: Sequence[float], steps: int
) -> np.ndarray:
    """Return the estimates z^(0..steps) [steps + 1, ..., 2] of the error-corrective algorithm."""
    if steps < 0:
        raise ValueError(f"steps={steps!r}: must be >= 0")
    alphas, eps = np.asarray(alphas, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    if np.any(eps <= 0):
        raise ValueError(f"eps={eps.tolist()}: every step size must be > 0")
    x = np.asarray(x, dtype=np.float64)
    z, estimates = x.copy(), [x.copy()]
    sign = np.sign(alphas)
    for _ in range(steps):
        prediction_error = alphas * z - x
        positive, negative = np.maximum(prediction_error, 0), np.maximum(-prediction_error, 0)
        z = z - sign * eps * positive + sign * eps * negative
        estimates.append(z.copy())
    return np.stack(estimates)


class ToyNet(nn.Module):
    """Encoder -> `blocks` MLP blocks (residual or not, shared or not) -> linear decoder."""

    def __init__(self, kind: str, config: ToyConfig) -> None:
        super().__init__()
        if kind not in NETWORKS:
            raise ValueError(f"kind={kind!r}: allowed are {NETWORKS}")
        self.kind = kind
        self.encoder = nn.Linear(2, config.hidden)
        count = 1 if kind == "recurrent" else config.blocks
        self.blocks = nn.ModuleList(_mlp(config.hidden, config.inner) for _ in range(count))
        self.decoder = nn.Linear(config.hidden, 2)
        self.num_blocks = config.blocks

    def block(self, t: int, h: torch.Tensor) -> torch.Tensor:
        """Return the representation after block t (0-based) is applied to h."""
        f = self.blocks[0 if self.kind == "recurrent" else t]
        # A non-residual block replaces the representation; a residual block adds to it.
        return f(h) if self.kind == "feedforward" else h + f(h)

    def readouts(self, x: torch.Tensor, schedule: Sequence[int] | None = None) -> torch.Tensor:
        """Return the decoded estimate after the encoder and after each scheduled block."""
        schedule = range(self.num_blocks) if schedule is None else schedule
        h = self.encoder(x)
        estimates = [self.decoder(h)]
        for t in schedule:
            h = self.block(t, h)
            estimates.append(self.decoder(h))
        return torch.stack(estimates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the estimate of z after all blocks."""
        return self.readouts(x)[-1]


def _mlp(hidden: int, inner: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, inner), nn.ReLU(), nn.Linear(inner, hidden))


def train_network(kind: str, config: ToyConfig) -> ToyNet:
    """Return a ToyNet of `kind` trained (MSE, Adam) to map x = f(z) back to z."""
    threads = torch.get_num_threads()
    # Tiny matrices: one thread is fastest, and several threads crawl on a shared CPU.
    torch.set_num_threads(1)
    try:
        return _train(kind, config)
    finally:
        torch.set_num_threads(threads)


def _train(kind: str, config: ToyConfig) -> ToyNet:
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = ToyNet(kind, config)
        optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
        alphas = torch.tensor(config.alphas)
        for _ in range(config.steps):
            z = (torch.rand(config.batch_size, 2) * 2 - 1) * config.z_range
            loss = torch.nn.functional.mse_loss(net(z * alphas), z)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return net.eval()


def schedules(config: ToyConfig) -> dict[str, list[int]]:
    """Return the block schedules of Fig 1b-d: normal, one block dropped, extra evaluations."""
    normal = list(range(config.blocks))
    dropped = [t for t in normal if t != config.dropped_block - 1]
    extra = normal + [config.blocks - 1] * config.extra_evaluations
    return {"normal": normal, "dropped": dropped, "extra": extra}


def trajectories(config: ToyConfig, nets: dict[str, ToyNet] | None = None) -> pd.DataFrame:
    """Return the estimates of every method [method, condition, step, z1, z2] for the example z.

    `step` counts applied blocks (0: the encoder's read-out, or the algorithm's start z = x).
    The error-corrective algorithm has only the "normal" and "extra" conditions (it has no
    blocks to drop); its "extra" steps continue the same update.
    """
    nets = nets if nets is not None else {kind: train_network(kind, config) for kind in NETWORKS}
    x = forward_model(np.asarray(config.example), config.alphas)
    rows = []
    total = config.blocks + config.extra_evaluations
    estimates = error_corrective(x, config.alphas, config.eps, total)
    for condition, last in (("normal", config.blocks), ("extra", total)):
        rows += [("error-corrective", condition, t, *estimates[t]) for t in range(last + 1)]
    inputs = torch.tensor(x, dtype=torch.float32)[None]
    for kind, net in nets.items():
        for condition, schedule in schedules(config).items():
            with torch.no_grad():
                path = net.readouts(inputs, schedule)[:, 0].double().numpy()
            rows += [(kind, condition, t, *path[t]) for t in range(len(path))]
    return pd.DataFrame(rows, columns=["method", "condition", "step", "z1", "z2"])


def recovery_error(net: ToyNet, config: ToyConfig, count: int = 512, seed: int = 1) -> float:
    """Return the mean distance between z_hat and z on fresh latents of the training range."""
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(count, 2, generator=generator) * 2 - 1) * config.z_range
    with torch.no_grad():
        estimate = net(z * torch.tensor(config.alphas))
    return float((estimate - z).norm(dim=1).mean())
