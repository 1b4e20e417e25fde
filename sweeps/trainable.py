"""The Ray Tune trainable: one trial of pipeline.train, its checkpoints and its MLflow run."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from pipeline.config import TrialConfig
from pipeline.tracking import TrialRun, run_name
from pipeline.train import run_trial
from sweeps.resources import Resources
from vocabulary import INDEX_NAMES

TRIAL_KEY = "trial"  # param_space key holding a trial's flat config
# param_space keys of the sweep, the same in every trial: restored with it on --resume.
GRID_KEY, EXPERIMENT_KEY = "grid", "experiment"
TRAINABLE_NAME = "iterconv_trial"
SCORES = ("final_test_error", *INDEX_NAMES)  # printed when a trial finishes


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs from the launcher of this session (not in the param space).

    Kept out of the param space on purpose: a resumed sweep may log to a new tracking URI
    (the launcher's local server gets a new port) while the trials' configs stay the same.
    """

    tracking_uri: str  # http(s) URI of the MLflow tracking server
    # Seconds between checkpoints handed to Tune (copied to storage); the first and the last
    # epoch always are. Every epoch's checkpoint would make Tune snapshot the whole sweep's
    # state every few seconds with hundreds of short trials.
    checkpoint_interval_s: float = 60.0


def placement_tags() -> dict[str, str]:
    """Return where this trial runs: Ray node id and IP, its resources and logical GPU ids."""
    resources = tune.get_context().get_trial_resources().required_resources
    return {
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        "ray_node_ip": ray.util.get_node_ip_address(),
        "ray_resources": json.dumps(resources, sort_keys=True),
        "ray_gpu_ids": json.dumps([str(i) for i in ray.get_gpu_ids()]),
    }


def run_tracked_trial(param: dict[str, Any], context: SweepContext) -> None:
    """Run one trial under Tune: resume from Tune's checkpoint, log to its MLflow run."""
    config = TrialConfig.from_dict(param[TRIAL_KEY])
    trial_id = tune.get_context().get_trial_id()
    run = TrialRun.open(
        context.tracking_uri,
        param[EXPERIMENT_KEY],
        trial_id,
        config,
        param[GRID_KEY],
        placement_tags(),
    )
    if run.finished_metrics is not None:
        # Its run ended FINISHED before the launcher died: report it, do not train it again.
        finals = {k: v for k, v in run.finished_metrics.items() if "/" not in k}
        tune.report({**finals, "mlflow_run_id": run.run_id})
        return
    workdir = tempfile.mkdtemp(prefix=f"iterconv-{trial_id}-")
    last_saved = [-math.inf]  # monotonic time of the last checkpoint handed to Tune
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(workdir)

        def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
            # MLflow first: a crash before the next checkpoint re-runs these epochs from the
            # last one (bit-for-bit), and log_epoch skips what is already logged.
            run.log_epoch(metrics)
            now = time.monotonic()
            due = now - last_saved[0] >= context.checkpoint_interval_s
            if checkpoint_dir is not None and (due or metrics["epoch"] == config.optim.epochs):
                last_saved[0] = now
                saved = tune.Checkpoint.from_directory(checkpoint_dir)
                tune.report(metrics, checkpoint=saved)
            else:
                tune.report(metrics)

        def log_datasets(splits: tuple) -> None:
            run.log_datasets(splits, config.data.root)

        result = run_trial(config, report=report, checkpoint_dir=workdir, on_data=log_datasets)
        run.finish(result)
        tune.report({**result.summary(), "mlflow_run_id": run.run_id})
    except Exception as error:
        # Keep the trial's own error if MLflow cannot be told (Tune reports and retries it).
        with contextlib.suppress(Exception):
            run.fail(error)
        raise
    finally:
        run.stop_system_metrics()  # also when Tune stops the trial (not an Exception)
        shutil.rmtree(workdir, ignore_errors=True)


def make_trainable(context: SweepContext, resources: Resources) -> Callable[[dict], None]:
    """Return the Tune function trainable of a sweep, with per-width resource requests."""

    def iterconv_trial(param: dict[str, Any]) -> None:
        run_tracked_trial(param, context)

    def request(param: dict[str, Any]) -> tune.PlacementGroupFactory:
        width = param[TRIAL_KEY]["model.width"]
        return tune.PlacementGroupFactory([resources.request(width)])

    iterconv_trial.__name__ = TRAINABLE_NAME
    return tune.with_resources(iterconv_trial, request)


def trial_dirname(trial: Any) -> str:
    """Return a readable trial directory name: run name and Tune's trial id."""
    config = TrialConfig.from_dict(trial.config[TRIAL_KEY])
    return f"{run_name(config)}_{trial.trial_id}"


def trial_id_of(path: str) -> str:
    """Return the Tune trial id in a trial directory made by trial_dirname (e.g. 136ec_00001)."""
    return "_".join(path.rstrip("/").rsplit("/", 1)[-1].split("_")[-2:])


class ProgressLines(tune.Callback):
    """Print one line per trial event (start, retry, finish, error) instead of Tune's tables."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print that a trial started (or restarted)."""
        self._print(trials, trial, f"started  {trial}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print that a trial failed and will be retried from its checkpoint."""
        self._print(trials, trial, f"retrying {trial} from its last checkpoint")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a finished trial's final error and indices."""
        result = trial.last_result or {}
        scores = ", ".join(f"{key} {result[key]:.3f}" for key in SCORES if key in result)
        if "diverged_epoch" in result:
            epoch = int(result["diverged_epoch"])
            scores = f"DIVERGED in epoch {epoch}, counted at chance ({scores})"
        self._print(trials, trial, f"finished {trial}: {scores}", ended=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a trial that failed for good, with where its error is stored."""
        self._print(trials, trial, f"FAILED   {trial}: see {trial.path}/error.txt", ended=True)

    @staticmethod
    def _print(trials: list, trial: Any, message: str, ended: bool = False) -> None:
        # Tune updates the trial's status after the callbacks: count it by hand when it ends.
        done = sum(1 for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR"))
        print(f"[{done + ended}/{len(trials)}] {message}", flush=True)
