"""Pre-activation ResNet with schedulable stages, ordinary / ICR / PCR blocks (docs/method.md)."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.spectral import SpectralBound, batchnorm_scale, batchnorm_with_scale
from models.torchvision_resnet import (
    TorchvisionResNet,
    build_torchvision_model,
    torchvision_parameter_count,
)
from models.typed_fields import Checked
from vocabulary import ARCHS, BLOCK_TYPES, CONVERGENT_BLOCKS, CONVERGENT_MU, IMAGE_SIZE, PREACT

NUM_STAGES = 3
# Parameters that every residual block holds at the same position (BN buffers are not coupled).
BLOCK_PARAMETERS = (
    "conv1.weight",
    "conv2.weight",
    "bn1.weight",
    "bn1.bias",
    "bn2.weight",
    "bn2.bias",
)


@dataclass(frozen=True)
class ResNetConfig(Checked):
    """The network of one trial; every perturbation is a schedule, not a new config."""

    SECTION = "model"

    width: int = 16  # channels of stage 1; stages 2 and 3 use 2x and 4x
    blocks_per_stage: int = 16  # N residual blocks per stage
    block: str = "ordinary"  # "ordinary" z + f(z), "icr" z + f~(z), "pcr" x + f~(z)
    mu: float = CONVERGENT_MU  # Lipschitz cap of f~ for ICR and PCR blocks, in (0, 1]
    recurrent_init: bool = False  # every block of a stage starts as a copy of block 0
    bn_gamma_init: float = 1.0  # initial BN gamma inside the blocks (paper S4a: 0.1)
    arch: str = PREACT  # "preact" (this network) or "torchvision-resnet18", ... (docs/measure.md)

    def check(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        self.require_positive("width", "blocks_per_stage")
        self.require("block", self.block in BLOCK_TYPES, f"allowed are {BLOCK_TYPES}")
        self.require("mu", 0 < self.mu <= 1, "must be in (0, 1]")
        gamma_ok = math.isfinite(self.bn_gamma_init) and self.bn_gamma_init > 0
        self.require("bn_gamma_init", gamma_ok, "must be a finite number > 0")
        self.require("arch", self.arch in ARCHS, f"allowed are {ARCHS}")
        if self.arch != PREACT:
            self.check_torchvision()

    def check_torchvision(self) -> None:
        """Refuse the keys of this pre-activation ResNet that a torchvision ResNet lacks."""
        # torchvision fixes widths and blocks; recurrent_init and bn_gamma_init act on its
        # shape-preserving blocks. A silently ignored key would label runs wrongly.
        self.require(
            "block",
            self.block == "ordinary",
            "spectral normalisation is specific to the project's pre-activation blocks: "
            f"model.arch={self.arch!r} allows only 'ordinary'",
        )
        for name in ("width", "blocks_per_stage"):
            default = type(self).__dataclass_fields__[name].default
            self.require(
                name,
                getattr(self, name) == default,
                f"does not apply to model.arch={self.arch!r} (torchvision fixes its widths and "
                f"blocks): leave it at {default}",
            )


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """One residual block; `spectral` makes f spectrally normalised, `proper` makes it PCR."""

    def __init__(
        self,
        channels: int,
        spatial_size: int,
        normalised: bool = False,
        proper: bool = False,
        mu: float = CONVERGENT_MU,
    ) -> None:
        super().__init__()
        if proper and not normalised:
            raise ValueError("a PCR block (proper=True) must be spectrally normalised")
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.proper = proper
        self.mu = mu
        self.spectral = SpectralBound(channels, spatial_size) if normalised else None

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """Return f(z), or f~(z) = f(z) / max(L^/mu, 1) for a normalised block."""
        if self.spectral is None:
            h = self.conv1(F.relu(self.bn1(z)))
            return self.conv2(F.relu(self.bn2(h)))
        h1, s1 = batchnorm_with_scale(self.bn1, z)
        h = self.conv1(F.relu(h1))
        h2, s2 = batchnorm_with_scale(self.bn2, h)
        f = self.conv2(F.relu(h2))
        return f / self.correction(s1, s2, z.shape[-1])

    def correction(self, s1: torch.Tensor, s2: torch.Tensor, spatial_size: int) -> torch.Tensor:
        """Return c = max(L^/mu, 1) (the paper prints mu/L^, a typo: docs/method.md)."""
        assert self.spectral is not None
        if spatial_size != self.spectral.v_conv2.shape[-1]:
            self.spectral._resize(spatial_size)
        with torch.autocast(s1.device.type, enabled=False):
            if self.training:
                # One power-iteration step per training step; the vectors drift slowly
                # with the weights, so one step keeps the estimate tight.
                self.spectral.iterate(self.conv1.weight, self.conv2.weight, s1, s2)
            sigma_conv2, sigma_bn_conv1 = self.spectral.factors(
                self.conv1.weight, self.conv2.weight, s1, s2
            )
            bound = sigma_conv2 * sigma_bn_conv1
        return torch.clamp(bound / self.mu, min=1.0)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Return the updated state: z + f(z), z + f~(z), or x + f~(z) for PCR."""
        if self.proper:
            if x is None:
                raise ValueError("a PCR block needs the stage input: call block(z, x)")
            return x + self.residual(z)
        return z + self.residual(z)

    def _scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Outside a forward pass only the running statistics are at hand.
        return batchnorm_scale(self.bn1), batchnorm_scale(self.bn2)

    def lipschitz_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the current estimates (||Conv2||_2, ||BN2 . Conv1 . BN1||_2)."""
        if self.spectral is None:
            raise ValueError("lipschitz_factors() needs an ICR or PCR block")
        s1, s2 = self._scales()
        with torch.no_grad():
            return self.spectral.factors(self.conv1.weight, self.conv2.weight, s1, s2)

    def lipschitz_bound(self) -> torch.Tensor:
        """Return the current estimate of L^(f), before division by mu."""
        sigma_conv2, sigma_bn_conv1 = self.lipschitz_factors()
        return sigma_conv2 * sigma_bn_conv1

    def power_iterate(self, iterations: int) -> None:
        """Run `iterations` more power-iteration steps with the running BN statistics."""
        if self.spectral is None:
            raise ValueError("power_iterate() needs an ICR or PCR block")
        s1, s2 = self._scales()
        self.spectral.iterate(self.conv1.weight, self.conv2.weight, s1, s2, iterations)


class Stage(nn.Module):
    """N residual blocks of one width, run in the order a schedule gives."""

    def __init__(
        self, channels: int, spatial_size: int, num_blocks: int, block: str, mu: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(
                channels,
                spatial_size,
                normalised=block in CONVERGENT_BLOCKS,
                proper=block == "pcr",
                mu=mu,
            )
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, schedule: Sequence[int] | None = None) -> torch.Tensor:
        """Return the stage output after applying the blocks named by `schedule` to x."""
        if schedule is None:
            schedule = range(len(self.blocks))
        z = x
        for t in schedule:
            z = self.blocks[t](z, x)
        return z

    def init_recurrent(self) -> None:
        """Make every block a copy of block 0 (recurrent initialisation)."""
        state = self.blocks[0].state_dict()
        for block in self.blocks[1:]:
            block.load_state_dict(state)


class Transition(nn.Module):
    """BN -> ReLU -> Conv3x3(stride 2, c -> 2c) between two stages."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = _conv3x3(channels, 2 * channels, stride=2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Return the downsampled feature map of twice the channels."""
        return self.conv(F.relu(self.bn(h)))


class Head(nn.Module):
    """BN -> ReLU -> global average pool -> Linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        pooled = F.relu(self.bn(h)).mean(dim=(2, 3))
        return self.fc(pooled)


class ResNet(nn.Module):
    """stem -> stage 0 -> transition -> stage 1 -> transition -> stage 2 -> head."""

    def __init__(self, cfg: ResNetConfig, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.width * 2**s for s in range(NUM_STAGES)]
        sizes = [IMAGE_SIZE // 2**s for s in range(NUM_STAGES)]
        self.stem = _conv3x3(in_channels, cfg.width)
        self.stages = nn.ModuleList(
            Stage(w, size, cfg.blocks_per_stage, cfg.block, cfg.mu)
            for w, size in zip(widths, sizes, strict=True)
        )
        self.transitions = nn.ModuleList(Transition(w) for w in widths[:-1])
        self.head = Head(widths[-1], num_classes)
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(module, ResidualBlock):
                nn.init.constant_(module.bn1.weight, self.cfg.bn_gamma_init)
                nn.init.constant_(module.bn2.weight, self.cfg.bn_gamma_init)
        if self.cfg.recurrent_init:
            for stage in self.stage_modules():
                stage.init_recurrent()

    def stage_modules(self) -> list[Stage]:
        """Return the stages, typed (a ModuleList iterates as plain Modules)."""
        return [typing.cast(Stage, stage) for stage in self.stages]

    def forward_stage(
        self, stage_index: int, h: torch.Tensor, schedule: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Return the output of stage `stage_index` given the previous stage's output h."""
        if stage_index > 0:
            h = self.transitions[stage_index - 1](h)
        return self.stages[stage_index](h, schedule)

    # The models.staged.StagedNetwork protocol: what the curves and the coupling act on.

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stem's output."""
        return self.stem(x)

    def stage_blocks(self) -> list[list[nn.Module]]:
        """Return each stage's residual blocks (the transitions sit between the stages)."""
        return [list(stage.blocks) for stage in self.stage_modules()]

    def block_parameters(self) -> tuple[str, ...]:
        """Return the parameters every residual block holds at the same position."""
        return BLOCK_PARAMETERS

    def forward_transition(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Return stage `stage`'s input: the previous stage's output after its transition."""
        return self.transitions[stage - 1](h) if stage > 0 else h

    def forward_block(
        self, stage: int, block: int, z: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Return block `block` of stage `stage` applied to z (x: the stage input, for PCR)."""
        return typing.cast(Stage, self.stages[stage]).blocks[block](z, x)

    def forward_from(self, stage_index: int, h: torch.Tensor) -> torch.Tensor:
        """Return the logits given the output h of stage `stage_index` (-1: of the stem)."""
        for s in range(stage_index + 1, NUM_STAGES):
            h = self.forward_stage(s, h)
        return self.forward_head(h)

    def forward_features(
        self, x: torch.Tensor, schedules: Mapping[int, Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Return the last stage's output; `schedules` maps a stage to its block order."""
        schedules = schedules or {}
        h = self.stem(x)
        for s in range(NUM_STAGES):
            h = self.forward_stage(s, h, schedules.get(s))
        return h

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        """Return the logits from the last stage's output."""
        return self.head(h)

    def forward(
        self, x: torch.Tensor, schedules: Mapping[int, Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Return the logits; stages not named in `schedules` run all their blocks."""
        for s, schedule in (schedules or {}).items():
            if s not in range(NUM_STAGES):
                raise ValueError(f"schedules key {s!r}: stages are 0, 1, 2")
            if any(t not in range(self.cfg.blocks_per_stage) for t in schedule):
                raise ValueError(
                    f"schedule {list(schedule)!r} for stage {s}: block indices must be in "
                    f"0..{self.cfg.blocks_per_stage - 1}"
                )
        return self.forward_head(self.forward_features(x, schedules))


def build_model(
    cfg: ResNetConfig, in_channels: int = 3, num_classes: int = 10
) -> ResNet | TorchvisionResNet:
    """Return a freshly initialised network for `cfg` (model.arch) on these channels and classes."""
    if cfg.arch != PREACT:
        return build_torchvision_model(cfg, in_channels, num_classes)
    return ResNet(cfg, in_channels, num_classes)


def normalised_blocks(model: nn.Module) -> list[ResidualBlock]:
    """Return the spectrally normalised blocks of a model (empty for an ordinary ResNet)."""
    return [m for m in model.modules() if isinstance(m, ResidualBlock) and m.spectral is not None]


def converge_power_iteration(
    model: nn.Module, tolerance: float = 1e-3, max_iterations: int = 200, chunk: int = 5
) -> int:
    """Iterate every normalised block until its L^ moves < `tolerance` relative; return steps."""
    blocks = normalised_blocks(model)
    done = 0
    previous = [b.lipschitz_bound() for b in blocks]
    while blocks and done < max_iterations:
        for block in blocks:
            block.power_iterate(chunk)
        done += chunk
        current = [b.lipschitz_bound() for b in blocks]
        moved = max(
            float((c - p).abs() / p.abs().clamp_min(1e-12))
            for c, p in zip(current, previous, strict=True)
        )
        previous = current
        if moved < tolerance:
            break
    return done


def parameter_count(cfg: ResNetConfig, in_channels: int = 3, num_classes: int = 10) -> int:
    """Return the trainable parameters of `build_model(cfg, ...)`: by formula, or torchvision's."""
    if cfg.arch != PREACT:
        return torchvision_parameter_count(cfg.arch, in_channels, num_classes)
    w, n = cfg.width, cfg.blocks_per_stage
    count = 9 * in_channels * w  # stem
    for s in range(NUM_STAGES):
        c = w * 2**s
        count += n * (2 * 9 * c * c + 4 * c)  # two convs, two BNs per block
        if s < NUM_STAGES - 1:
            count += 2 * c + 9 * c * 2 * c  # transition BN and stride-2 conv
    c = 4 * w
    count += 2 * c + c * num_classes + num_classes  # head BN and linear
    return count
