"""Time one training step (forward, backward, coupling, SGD step) with and without coupling.

    python benchmarks/step.py                    # N=16, width 16, batch 128, CPU
    python benchmarks/step.py --device cuda --steps 50

Prints the step time of an ordinary ResNet without coupling, with soft gradient coupling,
and of an ICR ResNet; the coupling overhead in percent (target: a few percent) and the
ratio ICR/ordinary (target <= 1.5x). Steps of the compared settings are interleaved (in rotating
order) so that a change in machine load hits all alike; each setting reports its fastest step
(the least disturbed by other processes, as `timeit` advises).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models import ResNetConfig, build_model
from pipeline.config import CouplingSection
from pipeline.coupling import GradientCoupler
from vocabulary import KERNELS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--blocks", type=int, default=16, help="N blocks per stage")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument("--coupling", type=float, default=0.5, help="coupling of the 'on' run")
    parser.add_argument("--kernel", default="uniform", choices=KERNELS, help="coupling kernel")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("blocks", "width", "batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: must be >= 0")
    if not 0 < args.coupling <= 1:
        parser.error(f"--coupling={args.coupling}: must be in (0, 1]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device={args.device}: CUDA is not available here")
    return args


def make_step(
    args: argparse.Namespace, device: torch.device, block: str, coupling: float
) -> tuple[Callable[[], None], GradientCoupler | None]:
    """Return a function running one training step of a fresh model, and its coupler."""
    torch.manual_seed(0)
    cfg = ResNetConfig(width=args.width, blocks_per_stage=args.blocks, block=block)
    model = build_model(cfg).to(device).train()
    optimiser = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    settings = CouplingSection(lam=coupling, kernel=args.kernel)
    coupler = GradientCoupler(model, settings) if coupling > 0 else None
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        if coupler is not None:
            coupler.apply()
        optimiser.step()

    return step, coupler


def seconds(function: Callable[[], None], device: torch.device) -> float:
    """Return the wall time of function() in seconds, waiting for the GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Time the three settings, interleaved, and print overhead and ratio."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = {
        "ordinary, no coupling": make_step(args, device, "ordinary", 0.0),
        f"ordinary, coupling {args.coupling}": make_step(args, device, "ordinary", args.coupling),
        "icr, no coupling": make_step(args, device, "icr", 0.0),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for i in range(args.warmup + args.steps):
        # Rotate the order each round so that no setting always runs right after another.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            elapsed = seconds(settings[name][0], device)
            if i >= args.warmup:
                times[name].append(elapsed)
    # The coupling alone, on the gradients the last step left behind.
    coupler = settings[f"ordinary, coupling {args.coupling}"][1]
    assert coupler is not None
    apply_seconds = min(seconds(coupler.apply, device) for _ in range(20))

    fastest = {name: min(t) for name, t in times.items()}
    off, on, icr = fastest.values()
    print(
        f"training step: N={args.blocks} width={args.width} batch={args.batch_size} "
        f"device={device} steps={args.steps}"
    )
    for name, value in fastest.items():
        print(f"{name:>24}: {1000 * value:9.1f} ms/step")
    print(
        f"coupling.apply() alone: {1000 * apply_seconds:.2f} ms ({100 * apply_seconds / off:.2f}%)"
    )
    print(f"coupling overhead (on/off - 1): {100 * (on / off - 1):+.1f}%")
    print(f"ratio icr/ordinary: {icr / off:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
