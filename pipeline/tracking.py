"""One MLflow run per trial, reopened by its Ray trial id, never duplicated (docs/results.md)."""

from __future__ import annotations

import getpass
import json
import numbers
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from models.torchvision_resnet import stage_block_counts, torchvision_name
from pipeline.provenance import dataset_input, environment_tags, git_commit
from pipeline.run_contents import (
    CONFIG_ARTIFACT,
    CURVES_ARTIFACT,
    DIVERGED_EPOCH_TAG,
    DIVERGED_TAG,
    EPOCH_HISTORY_METRIC,
    ERROR_TAG,
    GRID_TAG,
    TRIAL_ID_TAG,
    WEIGHTS_ARTIFACT,
    curve_metric_key,
)
from pipeline.trained_model import write_trained_model
from vocabulary import PREACT, variant_slug

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from pipeline.config import TrialConfig
    from pipeline.data import Dataset as DataSplit
    from pipeline.train import TrialResult

# MLflow's REST limits per log_batch request: 1000 metrics, 100 params, 100 tags.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAG_CHARS = 5000
# MLflow 3 opens an experiment as a GenAI app unless it is tagged as model training, and a
# browser that once saw a GenAI page keeps that view unless the link asks for the runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
RUNS_VIEW = "runs?workflowType=machine_learning"
# MLflow's own run tags, shown in the UI's Source, User and Description fields.
SOURCE_NAME = "sweeps/launch.py"
# CPU, memory (and GPU where pynvml sees one) sampled every so many seconds per trial; the
# environment variable MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0


def run_name(config: TrialConfig) -> str:
    """Return a readable run name like `cifar10-w16-rec0.9-icr-s2` (ordinary block omitted)."""
    model, coupling, data = config.model, config.coupling, config.data
    # A torchvision ResNet has its own widths: its name, not model.width, says which network.
    network = f"w{model.width}" if model.arch == PREACT else f"tv-{torchvision_name(model.arch)}"
    parts = [data.dataset, network]
    parts.append(variant_slug(model.recurrent_init, coupling.lam))
    if model.block != "ordinary":
        parts.append(model.block)
    if data.train_size is not None:
        parts.append(f"n{data.train_size}")
    if model.bn_gamma_init != 1.0:
        parts.append(f"bn{model.bn_gamma_init:g}")
    if coupling.kernel != "uniform":
        parts.append(coupling.kernel[:3])
    if coupling.first_coupled:
        parts.append(f"fc{coupling.first_coupled}")
    parts.append(f"s{config.run.seed}")
    return "-".join(parts)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Return the id of the experiment `name`, creating or restoring it (safe under races)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:
            # Another trial created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        # Made by an older version, or by hand: open it on the runs too.
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )
    return experiment.experiment_id


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """Return the MLflow UI link that opens an experiment on its runs table."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/{RUNS_VIEW}"


def describe(config: TrialConfig) -> str:
    """Return the condition of a trial in words, one line (the run's description)."""
    from vocabulary import BLOCK_LABELS, dataset_label, variant_label, variation_label

    model, coupling, data = config.model, config.coupling, config.data
    if model.arch == PREACT:
        block = BLOCK_LABELS[model.block]
        network = f"{block} ResNet" + (f" (mu {model.mu:g})" if model.block != "ordinary" else "")
        network += f", width {model.width}, {model.blocks_per_stage} blocks per stage"
    else:  # torchvision fixes its widths and blocks: model.width is unused
        name = torchvision_name(model.arch)
        counts = ", ".join(str(n) for n in stage_block_counts(name))
        network = f"torchvision {name} (stages of {counts} shape-preserving blocks)"
    init = "recurrent init" if model.recurrent_init else "non-recurrent init"
    images = (
        "all training images" if data.train_size is None else f"{data.train_size} training images"
    )
    variation = variation_label(model.bn_gamma_init, coupling.kernel, coupling.first_coupled)
    return (
        f"{network}, {init}, "
        f"coupling {coupling.lam:g} ({variant_label(model.recurrent_init, coupling.lam)}), "
        f"{variation} training, on {dataset_label(data.dataset)} ({images}), seed {config.run.seed}"
    )


def system_tags(config: TrialConfig) -> dict[str, str]:
    """Return MLflow's own tags of a trial's run: source, commit, user and description."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        user = "unknown"
    return {
        "mlflow.source.name": SOURCE_NAME,
        "mlflow.source.type": "JOB",
        "mlflow.source.git.commit": git_commit(),
        "mlflow.user": user,
        "mlflow.note.content": describe(config),
    }


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str) -> Any | None:
    """Return the run tagged with this Ray trial id (the oldest, if ever two), else None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TRIAL_ID_TAG} = '{trial_id}'",
        run_view_type=ViewType.ALL,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def close_unfinished_runs(
    tracking_uri: str, experiment: str, trial_ids: Iterable[str], status: str = "KILLED"
) -> list[str]:
    """Mark the still-RUNNING runs of these trials as `status`; return their run ids."""
    client = MlflowClient(tracking_uri)
    experiment_obj = client.get_experiment_by_name(experiment)
    if experiment_obj is None:
        return []
    closed = []
    for trial_id in trial_ids:
        run = find_trial_run(client, experiment_obj.experiment_id, trial_id)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


class TrialRun:
    """The MLflow run of one trial: reopened on retry, epochs logged once, ended FINISHED/FAILED."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        logged_epochs: set[int],
        finished_metrics: dict[str, float] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.logged_epochs = logged_epochs  # epochs already in the run's history
        self.monitor: Any | None = None  # MLflow's system metrics thread, while the trial runs
        # Set when the run had already ended FINISHED (a trial rerun after the launcher died
        # before Tune recorded its end): its final metrics, and nothing is to be logged again.
        self.finished_metrics = finished_metrics

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment: str,
        trial_id: str,
        config: TrialConfig,
        grid: str,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
    ) -> TrialRun:
        """Return the run of this trial: the existing one reopened, or a new one with params."""
        client = MlflowClient(tracking_uri)
        experiment_id = ensure_experiment(client, experiment)
        run_tags = {GRID_TAG: grid, TRIAL_ID_TAG: trial_id, **environment_tags(), **(tags or {})}
        run_tags |= system_tags(config)
        existing = find_trial_run(client, experiment_id, trial_id)
        if existing is None:
            run = client.create_run(experiment_id, tags=run_tags, run_name=run_name(config))
            run_id = run.info.run_id
            _log_params(client, run_id, config.to_flat_dict())
            _log_json_artifact(client, run_id, CONFIG_ARTIFACT, config.to_dict())
            trial_run = cls(client, run_id, set())
            if system_metrics:
                trial_run.start_system_metrics(tracking_uri, resumed=False)
            return trial_run
        run_id = existing.info.run_id
        if existing.info.status == "FINISHED":
            return cls(client, run_id, set(), dict(existing.data.metrics))
        previous_error = existing.data.tags.get(ERROR_TAG)
        if previous_error is not None:
            client.delete_tag(run_id, ERROR_TAG)
            run_tags["previous_error"] = previous_error
        attempts = int(existing.data.tags.get("attempts", "1")) + 1
        run_tags["attempts"] = str(attempts)
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in run_tags.items()])
        # A first attempt may have died between creating the run and logging its config.
        _complete_config(client, existing, config)
        history = client.get_metric_history(run_id, EPOCH_HISTORY_METRIC)
        trial_run = cls(client, run_id, {int(metric.step) for metric in history})
        if system_metrics:
            trial_run.start_system_metrics(tracking_uri, resumed=True)
        return trial_run

    def start_system_metrics(self, tracking_uri: str, resumed: bool) -> None:
        """Log CPU, memory (and GPU) use of this node as system/* metrics while the trial runs."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            resume_logging=resumed,  # a retry continues the steps of the first attempt
            tracking_uri=tracking_uri,
        )
        self.monitor.start()

    def stop_system_metrics(self) -> None:
        """Stop the system metrics thread and send what it has sampled."""
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def log_datasets(self, splits: Iterable[DataSplit], root: str) -> None:
        """Log the trial's train and test splits as the run's dataset inputs (once per digest)."""
        self.client.log_inputs(self.run_id, datasets=[dataset_input(s, root) for s in splits])

    def log_model(self, model: nn.Module, config: Mapping[str, Any]) -> None:
        """Store the trained weights (a state_dict) and the build_model arguments that fit them."""
        with tempfile.TemporaryDirectory(prefix="iterconv-artifacts-") as directory:
            write_trained_model(directory, model, config)
            self.client.log_artifacts(self.run_id, directory, os.path.dirname(WEIGHTS_ARTIFACT))

    def log_epoch(self, metrics: Mapping[str, float]) -> bool:
        """Log one epoch's metrics with step=epoch in one request; False if already logged."""
        epoch = int(metrics["epoch"])
        if epoch in self.logged_epochs:
            return False
        now = _now_ms()
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if _is_number(v)]
        _log_metrics(self.client, self.run_id, batch)
        self.logged_epochs.add(epoch)
        return True

    def finish(self, result: TrialResult) -> None:
        """Log final metrics, indices and curves (stepped and as Parquet); end the run FINISHED."""
        now = _now_ms()
        step = int(result.metrics.get("epochs", 0))
        finals = {**result.metrics, **result.indices}
        batch = [Metric(k, float(v), now, step) for k, v in finals.items() if _is_number(v)]
        batch += curve_metrics(result.curves, now)
        # A retry after a finish() that died partway logs only what is not there yet.
        _log_metrics(self.client, self.run_id, self._not_yet_logged(batch))
        if CURVES_ARTIFACT not in _artifact_names(self.client, self.run_id):
            with tempfile.TemporaryDirectory(prefix="iterconv-artifacts-") as directory:
                path = os.path.join(directory, CURVES_ARTIFACT)
                result.curves.to_parquet(path, index=False)
                self.client.log_artifact(self.run_id, path)
        # A diverged trial is a result (error at chance, NaN indices), so its run FINISHES.
        tags = {DIVERGED_TAG: str(result.diverged).lower()}
        if result.diverged_epoch is not None:
            tags[DIVERGED_EPOCH_TAG] = str(result.diverged_epoch)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if result.model is not None:  # a diverged trial has no network worth keeping
            self.log_model(result.model, result.network)
        self.stop_system_metrics()
        self.client.set_terminated(self.run_id, status="FINISHED")

    def _not_yet_logged(self, batch: list[Metric]) -> list[Metric]:
        """Return the metrics of `batch` whose (key, step) the run does not hold yet."""
        present = self.client.get_run(self.run_id).data.metrics
        keys = {m.key for m in batch} & present.keys()
        if not keys:
            return batch  # the usual case: one request to ask
        logged = {
            (key, m.step) for key in keys for m in self.client.get_metric_history(self.run_id, key)
        }
        return [m for m in batch if (m.key, m.step) not in logged]

    def fail(self, error: BaseException) -> None:
        """Record the error as a tag and end the run FAILED (a retry reopens it)."""
        message = f"{type(error).__name__}: {error}"[:MAX_TAG_CHARS]
        self.stop_system_metrics()
        self.client.set_tag(self.run_id, ERROR_TAG, message)
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.FAILED))


def _artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    """Return the names of a run's top-level artifacts."""
    return {artifact.path for artifact in client.list_artifacts(run_id)}


def _complete_config(client: MlflowClient, run: Any, config: TrialConfig) -> None:
    """Log the params and config.json that a half-made run lacks (a retry of its creation)."""
    flat = config.to_flat_dict()
    missing = {key: value for key, value in flat.items() if key not in run.data.params}
    if missing:
        _log_params(client, run.info.run_id, missing)
    if CONFIG_ARTIFACT not in _artifact_names(client, run.info.run_id):
        _log_json_artifact(client, run.info.run_id, CONFIG_ARTIFACT, config.to_dict())


def curve_metrics(curves: pd.DataFrame, timestamp: int) -> list[Metric]:
    """Return each perturbation curve as a stepped metric `curve/<curve>/stage<s>`."""
    rows = zip(curves["curve"], curves["stage"], curves["step"], curves["error"], strict=True)
    return [
        Metric(curve_metric_key(curve, int(stage)), float(error), timestamp, int(step))
        for curve, stage, step, error in rows
    ]


def _log_params(client: MlflowClient, run_id: str, flat: Mapping[str, Any]) -> None:
    """Log the flat config as params, in batches within MLflow's per-request limit."""
    params = [Param(key, str(value)) for key, value in sorted(flat.items())]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """Log metrics in as few requests as MLflow's batch limit allows."""
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])


def _log_json_artifact(client: MlflowClient, run_id: str, name: str, content: Any) -> None:
    """Upload `content` as a JSON artifact called `name`."""
    with tempfile.TemporaryDirectory(prefix="iterconv-artifacts-") as directory:
        path = os.path.join(directory, name)
        with open(path, "w") as file:
            json.dump(content, file, indent=2, sort_keys=True)
        client.log_artifact(run_id, path)


def _is_number(value: Any) -> bool:
    """Return True for values MLflow can store as a metric (numpy scalars too, bools not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _now_ms() -> int:
    """Return the wall time in milliseconds, MLflow's timestamp unit."""
    return int(time.time() * 1000)
