"""torchvision's ResNets as staged networks, so the curves, indices and coupling apply to them.

torchvision's `layerK` is an `nn.Sequential` of residual blocks. Where its first block has a
`downsample` (a stride or a change of channels), that block is the stage's *transition*; the
blocks after it keep their input's shape and are the stage's blocks, the ones that reading out
early, dropping a block, applying the last block again and gradient coupling act on. A layer
whose first block has no downsample (layer1 of resnet18 and resnet34) has no transition: all
its blocks are the stage's blocks. Stem: conv1, bn1, relu, maxpool; head: avgpool, flatten, fc.

The modules keep torchvision's names (`conv1`, ..., `layer4`, `fc`), so a torchvision
`state_dict` loads as it is and the plain forward pass is torchvision's, operation for
operation. torchvision is imported only when a network is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from models.staged import Schedules, block_counts, check_schedules
from vocabulary import ARCHS, TORCHVISION_PREFIX, TORCHVISION_RESNETS

if TYPE_CHECKING:
    from models.resnet import ResNetConfig

# torchvision's numbers: (Bottleneck blocks?, blocks of layer1..layer4).
TORCHVISION_LAYERS: dict[str, tuple[bool, tuple[int, ...]]] = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
    "resnet101": (True, (3, 4, 23, 3)),
    "resnet152": (True, (3, 8, 36, 3)),
    "wide_resnet50_2": (True, (3, 4, 6, 3)),
}
LAYERS = ("layer1", "layer2", "layer3", "layer4")
# In torchvision's order, so state_dict keys come out in torchvision's order too.
MODULES = ("conv1", "bn1", "relu", "maxpool", *LAYERS, "avgpool", "fc")


def torchvision_name(arch: str) -> str:
    """Return the torchvision builder's name of a model.arch ("torchvision-resnet18" -> ...)."""
    name = arch.removeprefix(TORCHVISION_PREFIX)
    if not arch.startswith(TORCHVISION_PREFIX) or name not in TORCHVISION_RESNETS:
        raise ValueError(f"model.arch={arch!r}: a torchvision ResNet is one of {ARCHS[1:]}")
    return name


def stage_block_counts(name: str) -> tuple[int, ...]:
    """Return N_s of each stage of a torchvision ResNet, without building it."""
    if name not in TORCHVISION_LAYERS:
        raise ValueError(f"unknown torchvision ResNet {name!r}: allowed are {TORCHVISION_RESNETS}")
    bottleneck, layers = TORCHVISION_LAYERS[name]
    # Only layer1 of a BasicBlock ResNet keeps its input's shape in its first block (64
    # channels in, 64 out, stride 1); every other layer starts with a downsampling transition.
    return tuple(n if s == 0 and not bottleneck else n - 1 for s, n in enumerate(layers))


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in TORCHVISION_RESNETS:
        raise ValueError(f"unknown torchvision ResNet {name!r}: allowed are {TORCHVISION_RESNETS}")
    import torchvision.models

    return cast(Callable[..., nn.Module], getattr(torchvision.models, name))


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet (random weights) as stem, transitions, shape-preserving blocks, head."""

    # torchvision's modules, under torchvision's names (MODULES).
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    maxpool: nn.MaxPool2d
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    avgpool: nn.AdaptiveAvgPool2d
    fc: nn.Linear

    def __init__(self, name: str, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        network = _builder(name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            # torchvision's stem convolution, for this many input channels.
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            # torchvision's own initialisation of its convolutions.
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
            network.conv1 = conv1
        self.arch = TORCHVISION_PREFIX + name
        for module in MODULES:
            setattr(self, module, getattr(network, module))
        parameters = {self.block_names(blocks) for blocks in self.stage_blocks()}
        if len(parameters) != 1 or () in parameters:
            raise ValueError(f"{name}: every stage needs blocks of one kind, got {parameters}")

    @staticmethod
    def block_names(blocks: list[nn.Module]) -> tuple[str, ...]:
        """Return the parameter names the blocks share, or () if any block differs."""
        names = {tuple(n for n, _ in block.named_parameters()) for block in blocks}
        return names.pop() if len(names) == 1 else ()

    def layers(self) -> list[nn.Sequential]:
        """Return torchvision's layer1..layer4."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _stage(self, stage: int) -> tuple[nn.Module | None, list[nn.Module]]:
        """Return (the transition or None, the shape-preserving blocks) of a stage."""
        blocks = list(self.layers()[stage])
        if getattr(blocks[0], "downsample", None) is not None:
            return blocks[0], blocks[1:]
        return None, blocks

    def stage_blocks(self) -> list[list[nn.Module]]:
        """Return each stage's shape-preserving blocks (its transition left out)."""
        return [self._stage(s)[1] for s in range(len(LAYERS))]

    def block_parameters(self) -> tuple[str, ...]:
        """Return the parameters every block holds at the same position (conv*, bn*)."""
        return self.block_names(self.stage_blocks()[0])

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Return conv1 -> bn1 -> relu -> maxpool of the input."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_transition(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Return the stage's first (downsampling) block applied to h, or h where it has none."""
        transition = self._stage(stage)[0]
        return h if transition is None else transition(h)

    def forward_block(
        self, stage: int, block: int, z: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Return shape-preserving block `block` of the stage applied to z (x is not used)."""
        return self._stage(stage)[1][block](z)

    def forward_stage(
        self, stage: int, h: torch.Tensor, schedule: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Return the stage's output: its transition, then the blocks `schedule` names."""
        x = self.forward_transition(stage, h)
        blocks = self._stage(stage)[1]
        z = x
        for t in range(len(blocks)) if schedule is None else schedule:
            z = blocks[t](z)
        return z

    def forward_from(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Return the logits from stage `stage`'s output, the later stages unperturbed."""
        for s in range(stage + 1, len(LAYERS)):
            h = self.forward_stage(s, h)
        return self.forward_head(h)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        """Return avgpool -> flatten -> fc of the last stage's output."""
        return self.fc(torch.flatten(self.avgpool(h), 1))

    def forward(self, x: torch.Tensor, schedules: Schedules | None = None) -> torch.Tensor:
        """Return the logits; stages not named in `schedules` run all their blocks."""
        check_schedules(schedules, block_counts(self))
        schedules = schedules or {}
        h = self.forward_stem(x)
        for s in range(len(LAYERS)):
            h = self.forward_stage(s, h, schedules.get(s))
        return self.forward_head(h)

    def init_recurrent(self) -> None:
        """Make every shape-preserving block of a stage a copy of the stage's first."""
        for blocks in self.stage_blocks():
            state = blocks[0].state_dict()
            for block in blocks[1:]:
                block.load_state_dict(state)

    def init_block_bn_gamma(self, gamma: float) -> None:
        """Set the BN scale gamma of every shape-preserving block (paper S4a: 0.1)."""
        for blocks in self.stage_blocks():
            for block in blocks:
                for module in block.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        nn.init.constant_(module.weight, gamma)


def build_torchvision_model(
    cfg: ResNetConfig, in_channels: int = 3, num_classes: int = 10
) -> TorchvisionResNet:
    """Return a freshly initialised torchvision ResNet for a config with a torchvision arch."""
    model = TorchvisionResNet(torchvision_name(cfg.arch), num_classes, in_channels)
    # The order of the project's ResNet: BN gamma first, then the recurrent copy.
    if cfg.bn_gamma_init != 1.0:
        model.init_block_bn_gamma(cfg.bn_gamma_init)
    if cfg.recurrent_init:
        model.init_recurrent()
    return model


def torchvision_parameter_count(arch: str, in_channels: int = 3, num_classes: int = 10) -> int:
    """Return the trainable parameters of a torchvision arch, counted on the meta device."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = TorchvisionResNet(torchvision_name(arch), num_classes, in_channels)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "TORCHVISION_LAYERS",
    "TorchvisionResNet",
    "build_torchvision_model",
    "stage_block_counts",
    "torchvision_name",
    "torchvision_parameter_count",
]
