"""Seconds per trial of a Tune sweep that reuses Ray's worker processes, against new ones.

    python benchmarks/actors.py                  # 8 tiny Digitclutter-3 trials, one per core
    python benchmarks/actors.py --trials 12 --epochs 2

The launcher runs with `reuse_actors=True` (sweeps/sweep.py): a finished trial's process takes
the next trial of the same resources, so the next one neither starts Python nor imports torch.
The plain way is Tune's default, a new process per trial. Both sweeps run the same small trials
of `pipeline.train.run_trial` (without MLflow) on a local Ray, after one untimed warm-up trial,
in this one run; the ratio is plain / reused seconds. Short trials show the saving most: it is
a fixed cost per trial.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from pipeline.config import TrialConfig
from pipeline.train import run_trial
from sweeps.grids import SMOKE_BASE
from sweeps.preflight import prepare_data

TINY = {
    "data.clutter_train_images": 512,
    "data.clutter_test_images": 128,
    "data.index_examples": 64,
    "run.threads": 1,
}


def one_trial(param: dict[str, Any]) -> None:
    """Train one trial and report its test error to Tune."""
    result = run_trial(TrialConfig.from_dict(param))
    tune.report({"final_test_error": result.metrics["final_test_error"]})


def sweep_seconds(trials: list[dict[str, Any]], storage: Path, name: str, reuse: bool) -> float:
    """Return the wall-clock seconds of a Tune sweep over `trials`."""
    tuner = tune.Tuner(
        tune.with_resources(one_trial, {"cpu": 1}),
        param_space=tune.grid_search(trials),
        tune_config=tune.TuneConfig(reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    if results.errors:
        raise SystemExit(f"{name}: {len(results.errors)} trials failed: {results.errors[0]}")
    return seconds


def main() -> None:
    """Print the seconds per trial of both sweeps and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    args = parser.parse_args()
    if args.trials < 1 or args.epochs < 1:
        parser.exit(2, f"{parser.prog}: error: --trials and --epochs must be >= 1\n")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no progress tables between the rows
    with tempfile.TemporaryDirectory(prefix="iterconv-actors-") as directory:
        root = Path(directory)
        base = {**SMOKE_BASE, **TINY, "optim.epochs": args.epochs, "data.root": str(root)}
        trials = [{**base, "run.seed": seed} for seed in range(args.trials)]
        prepare_data([TrialConfig.from_dict(trials[0])])  # the data once, outside the timing
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        try:
            sweep_seconds(trials[:1], root, "warm-up", reuse=False)
            plain = sweep_seconds(trials, root, "new-process", reuse=False)
            reused = sweep_seconds(trials, root, "reused", reuse=True)
        finally:
            ray.shutdown()
    print(f"{args.trials} trials of {args.epochs} epoch(s) on {os.cpu_count()} CPUs")
    print(f"{'workers':<22} {'seconds':>8} {'s/trial':>8}")
    print(f"{'a new process (plain)':<22} {plain:>8.1f} {plain / args.trials:>8.2f}")
    print(f"{'reused':<22} {reused:>8.1f} {reused / args.trials:>8.2f}")
    print(f"ratio plain / reused: {plain / reused:.2f}")


if __name__ == "__main__":
    main()
