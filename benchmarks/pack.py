"""Packing prototype: K same-shape ResNets trained as one network of grouped convolutions.

    python benchmarks/pack.py                         # auto device, widths 8 16, K = 1 4 16
    python benchmarks/pack.py --device cpu --widths 8 --packs 1 2 --blocks 2 --batch-size 16

Horizontal fusion (HFTA-style): network k owns channels [k*c, (k+1)*c) of every layer, its
convolutions are one group of a grouped convolution, its BN channels are its own, and its
linear read-out is one slice of a batched matmul, so the K networks never mix. Each step
trains all K on K different batches (the loss is the sum of their K losses). The script checks
that the packed network computes what K separate ResNets compute, then prints packed images/s
against K separate processes training one ordinary ResNet each, and the ratio. A measurement
to decide the next design step, not a sweep feature: ordinary blocks, no coupling.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models import ResNet, ResNetConfig, build_model
from pipeline.steps import TrainStep

NUM_STAGES = 3


def _grouped_conv(channels: int, out_channels: int, packs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        packs * channels,
        packs * out_channels,
        3,
        stride=stride,
        padding=1,
        groups=packs,
        bias=False,
    )


class PackedBlock(nn.Module):
    """K pre-activation residual blocks of c channels as one block of K*c channels."""

    def __init__(self, channels: int, packs: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(packs * channels)
        self.conv1 = _grouped_conv(channels, channels, packs)
        self.bn2 = nn.BatchNorm2d(packs * channels)
        self.conv2 = _grouped_conv(channels, channels, packs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return z + f(z) for every packed network at once."""
        return z + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(z))))))


class PackedResNet(nn.Module):
    """K ordinary ResNets of one config: inputs [B, K*C, H, W] -> logits [B, K, classes]."""

    def __init__(
        self, cfg: ResNetConfig, packs: int, in_channels: int = 3, num_classes: int = 10
    ) -> None:
        super().__init__()
        if cfg.block != "ordinary":
            raise ValueError(f"block={cfg.block!r}: the packing prototype packs ordinary blocks")
        self.cfg, self.packs = cfg, packs
        widths = [cfg.width * 2**s for s in range(NUM_STAGES)]
        self.stem = nn.Conv2d(
            packs * in_channels, packs * cfg.width, 3, padding=1, groups=packs, bias=False
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(PackedBlock(w, packs) for _ in range(cfg.blocks_per_stage))
            for w in widths
        )
        self.transitions = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(packs * w), nn.ReLU(), _grouped_conv(w, 2 * w, packs, 2))
            for w in widths[:-1]
        )
        self.head_bn = nn.BatchNorm2d(packs * widths[-1])
        self.fc_weight = nn.Parameter(torch.zeros(packs, num_classes, widths[-1]))
        self.fc_bias = nn.Parameter(torch.zeros(packs, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of every packed network, [batch, packs, classes]."""
        h = self.stem(x)
        for s, blocks in enumerate(self.stages):
            if s > 0:
                h = self.transitions[s - 1](h)
            for block in blocks:
                h = block(h)
        pooled = F.relu(self.head_bn(h)).mean(dim=(2, 3))
        pooled = pooled.view(len(pooled), self.packs, -1)  # [B, K, 4w]
        return torch.einsum("bkc,koc->bko", pooled, self.fc_weight) + self.fc_bias

    @classmethod
    def from_models(cls, models: Sequence[ResNet]) -> PackedResNet:
        """Return the packed network holding copies of these ResNets' weights and statistics."""
        first = models[0]
        packed = cls(first.cfg, len(models), first.stem.in_channels, first.head.fc.out_features)
        with torch.no_grad():
            _pack_conv(packed.stem, [m.stem for m in models])
            for s, blocks in enumerate(packed.stages):
                for t, block in enumerate(blocks):
                    originals = [m.stages[s].blocks[t] for m in models]
                    for name in ("bn1", "conv1", "bn2", "conv2"):
                        _pack(getattr(block, name), [getattr(o, name) for o in originals])
            for s, transition in enumerate(packed.transitions):
                _pack(transition[0], [m.transitions[s].bn for m in models])
                _pack(transition[2], [m.transitions[s].conv for m in models])
            _pack(packed.head_bn, [m.head.bn for m in models])
            packed.fc_weight.copy_(torch.stack([m.head.fc.weight for m in models]))
            packed.fc_bias.copy_(torch.stack([m.head.fc.bias for m in models]))
        return packed


def _pack_conv(packed: nn.Conv2d, convs: Sequence[nn.Conv2d]) -> None:
    packed.weight.copy_(torch.cat([c.weight for c in convs]))


def _pack(packed: nn.Module, modules: Sequence[nn.Module]) -> None:
    """Concatenate the parameters and buffers of K modules along their channel dimension."""
    if isinstance(packed, nn.Conv2d):
        _pack_conv(packed, modules)
        return
    for name, tensor in [*packed.named_parameters(), *packed.named_buffers()]:
        parts = [getattr(m, name) for m in modules]
        if tensor.dim() == 0:  # num_batches_tracked
            tensor.copy_(parts[0])
        else:
            tensor.copy_(torch.cat(parts))


class PackedLoss:
    """The loss of a packed step: the sum of the K networks' mean cross-entropies."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return sum_k CE(logits[:, k], targets[:, k]): each network's gradient as if alone."""
        classes = logits.shape[-1]
        per_network = F.cross_entropy(
            logits.float().reshape(-1, classes), targets.reshape(-1), reduction="none"
        )
        return per_network.view(targets.shape).mean(dim=0).sum()


def packing_matches_separate(
    width: int, packs: int, blocks: int, device: torch.device, batch: int = 8
) -> float:
    """Return max |packed - separate| logits over K ResNets in training mode (fp32)."""
    cfg = ResNetConfig(width=width, blocks_per_stage=blocks)
    models = []
    for seed in range(packs):
        torch.manual_seed(seed)
        models.append(build_model(cfg).to(device).train())
    packed = PackedResNet.from_models(models).to(device).train()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(packs, batch, 3, 32, 32, generator=generator).to(device)
    with torch.no_grad():
        separate = torch.stack([m(x) for m, x in zip(models, inputs, strict=True)], dim=1)
        together = packed(inputs.transpose(0, 1).reshape(batch, packs * 3, 32, 32))
    return float((together - separate).abs().max())


def packed_rate(
    width: int,
    packs: int,
    blocks: int,
    batch_size: int,
    device: torch.device,
    steps: int,
    step_mode: str = "eager",
) -> dict[str, float]:
    """Return images/s (all K networks together) and peak memory of packed training steps."""
    torch.manual_seed(0)
    model = PackedResNet(ResNetConfig(width=width, blocks_per_stage=blocks), packs).to(device)
    mixed_precision = device.type == "cuda"
    if mixed_precision:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    step = TrainStep(model, optimizer, None, PackedLoss(), mixed_precision, step_mode)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        x = torch.randn(batch_size, packs * 3, 32, 32, generator=generator).to(device)
        if mixed_precision:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size, packs), generator=generator).to(device)
        batches.append((x, y))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(6):  # warm-up: cuDNN autotuning, compile or capture
        step(*batches[i % len(batches)])
    _synchronise(device)
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    _synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"images_per_second": steps * batch_size * packs / seconds, "peak_bytes": peak}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    """Check the packing, then print packed images/s against K separate processes."""
    from benchmarks.sharing import WorkerPool, WorkerSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16], help="K values")
    parser.add_argument("--blocks", type=int, default=16, help="N blocks per stage")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per network")
    parser.add_argument("--steps", type=int, default=20, help="timed packed steps")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed window per process")
    args = parser.parse_args(argv)
    if min(args.widths + args.packs + [args.blocks, args.batch_size, args.steps]) < 1:
        parser.error("--widths, --packs, --blocks, --batch-size and --steps must be >= 1")
    name = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: CUDA is not available here")
    device = torch.device(name)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(1)  # as each separate process gets one thread
    worst = max(packing_matches_separate(w, max(args.packs), 2, device) for w in args.widths)
    print(f"packed logits vs separate ResNets: max |difference| {worst:.2e} (fp32)")
    if worst > 1e-4:
        print("packing does not compute what separate networks compute", file=sys.stderr)
        return 1
    spec = WorkerSpec(device.type, args.blocks, args.batch_size, 4 * args.batch_size, "eager")
    print(f"device {device}, N={args.blocks}, batch {args.batch_size} per network, eager")
    print(f"{'width':>5} {'K':>3} {'packed img/s':>12} {'K processes':>12} {'ratio':>6}")
    with WorkerPool(max(args.packs), spec) as pool:
        for width in args.widths:
            for packs in args.packs:
                packed = packed_rate(width, packs, args.blocks, args.batch_size, device, args.steps)
                separate = pool.aggregate_rate(width, packs, args.seconds)["images_per_second"]
                ratio = packed["images_per_second"] / separate
                print(
                    f"{width:>5} {packs:>3} {packed['images_per_second']:>12.0f} "
                    f"{separate:>12.0f} {ratio:>6.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
