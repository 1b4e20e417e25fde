"""Time the cached perturbation curves against one full forward pass per perturbation.

    python benchmarks/indices.py                 # N=16, width 8, 256 examples, CPU
    python benchmarks/indices.py --device cuda --examples 2000

"naive" runs one full forward pass per perturbation; "cached" starts each perturbation from
the unperturbed pass and, on a GPU, batches branches. Both compute the three curves of every
stage of the same network on the same random examples; the script checks that they agree and
prints both times (wall and, on a CPU, this process's CPU time) and naive/cached.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from models import ResNetConfig, build_model, converge_power_iteration
from pipeline.indices import naive_perturbation_curves, perturbation_curves
from pipeline.tasks import task_for
from vocabulary import BLOCK_TYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--blocks", type=int, default=16, help="N blocks per stage")
    parser.add_argument("--width", type=int, default=8, help="channels of the first stage")
    parser.add_argument("--block", default="ordinary", choices=BLOCK_TYPES, help="block type")
    parser.add_argument("--examples", type=int, default=256, help="random 32x32 test images")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch")
    parser.add_argument("--extra", type=int, default=16, help="K extra evaluations")
    parser.add_argument(
        "--max-branch-examples", type=int, default=None, help="branch batch cap (default: auto)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("blocks", "width", "examples", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.extra < 0:
        parser.error(f"--extra={args.extra}: must be >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device={args.device}: CUDA is not available here")
    return args


def timed(function, device: torch.device) -> tuple[pd.DataFrame, float, float]:
    """Return the result of function(), its wall time and this process's CPU time (s)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    """Run both ways once each and print the times and their ratio."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ResNetConfig(width=args.width, blocks_per_stage=args.blocks, block=args.block)
    model = build_model(cfg).to(device)
    with torch.no_grad():  # give BN running statistics that are not the defaults
        model(torch.randn(64, 3, 32, 32, device=device))
    converge_power_iteration(model)
    task = task_for("cifar10")
    inputs = torch.randn(args.examples, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.examples,), device=device)
    batches = list(zip(inputs.split(args.batch_size), targets.split(args.batch_size), strict=True))

    options = {}
    if args.max_branch_examples is not None:
        options["max_branch_examples"] = args.max_branch_examples
    with torch.no_grad():  # warm-up: first calls pay for allocations and kernel selection
        model.eval()(batches[0][0])
    cached, cached_wall, cached_cpu = timed(
        lambda: perturbation_curves(model, batches, task, args.extra, **options), device
    )
    naive, naive_wall, naive_cpu = timed(
        lambda: naive_perturbation_curves(model, batches, task, args.extra), device
    )
    same = cached.equals(naive)
    print(
        f"perturbation curves: N={args.blocks} width={args.width} block={args.block} "
        f"examples={args.examples} batch={args.batch_size} K={args.extra} device={device}"
    )
    for name, wall, cpu in (("naive", naive_wall, naive_cpu), ("cached", cached_wall, cached_cpu)):
        print(f"{name:>6}: {wall:8.2f} s wall, {cpu:8.2f} s CPU")
    print(f"ratio naive/cached: {naive_wall / cached_wall:.2f}x")
    if device.type == "cpu":
        # On a shared machine the process's own CPU time is less disturbed by other load.
        print(f"ratio naive/cached in CPU time: {naive_cpu / cached_cpu:.2f}x")
    print(f"curves identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
