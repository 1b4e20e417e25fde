"""MLflow runs -> `runs.parquet` and `curves.parquet`, incrementally (docs/results.md).

Schema of `runs.parquet`, one row per FINISHED run, sorted by (experiment, run_name, run_id):

- `run_id`, `run_name`, `experiment`, `status` (always "FINISHED"), `grid`, `trial_id`
  (tag `ray_trial_id`), `git_commit` (tag; null if absent): strings.
- `start_time`, `end_time`: timestamp[ms, UTC].
- one column per flat config key ("model.width", "coupling.lam", "data.train_size", ...) with its
  Python type: int64, float64, bool or string; nullable Int64 / boolean where some runs hold None.
  Types come from the run's `config.json` artifact, else from its params via `ast.literal_eval`.
- one float64 column per final metric: final_test_error, final_test_loss, final_train_loss,
  parameters, train_seconds, ci, ri, di, ci_stage1..3, ri_stage1..3, di_stage1..3, and the last
  value of every per-epoch metric (epoch, test_error, ...). The stepped `curve/...` metrics are
  not columns: they are `curves.parquet`.

Schema of `curves.parquet`, sorted by (run_id, stage, curve, step):
`run_id` string, `stage` int64 (1..3), `curve` string ("readout" | "dropout" | "extra"),
`step` int64 (block t for readout/dropout, extra evaluations k for extra), `error` float64.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import sys
import tempfile
import typing
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm import tqdm

RUNS_FILE = "runs.parquet"
CURVES_FILE = "curves.parquet"
CURVES_ARTIFACT = "curves.parquet"
CONFIG_ARTIFACT = "config.json"
CURVE_NAMES = ("readout", "dropout", "extra")
BASE_COLUMNS = ("run_id", "run_name", "experiment", "status", "grid", "trial_id", "git_commit")
TIME_COLUMNS = ("start_time", "end_time")
CURVE_COLUMNS = ("run_id", "stage", "curve", "step", "error")
CURVE_METRIC_PREFIX = "curve/"


class CorruptRunError(Exception):
    """A finished run whose artifacts cannot be read as the contract says."""


@dataclasses.dataclass(frozen=True)
class SkippedRun:
    """A run kept out of the tables, and why."""

    run_id: str
    run_name: str
    experiment: str
    reason: str  # e.g. "status FAILED" or "corrupt artifact curves.parquet: ..."

    def message(self) -> str:
        """Return the one-line report written on stderr."""
        return f"skipped run {self.run_id} ({self.run_name}, {self.experiment}): {self.reason}"


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """The two tables and what it took to make them."""

    runs: pd.DataFrame  # schema: module docstring
    curves: pd.DataFrame  # schema: module docstring
    fetched: int  # runs whose artifacts were downloaded this time
    reused: int  # runs taken unchanged from the previous runs.parquet
    skipped: tuple[SkippedRun, ...]  # failed, running or corrupt runs, kept out


def select_experiments(client: MlflowClient, names: Sequence[str] | None) -> dict[str, str]:
    """Return {experiment_id: name} of the named experiments, or of all active ones if None."""
    experiments = _all_experiments(client)
    if not names:
        return {e.experiment_id: e.name for e in experiments}
    by_name = {e.name: e.experiment_id for e in experiments}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}: allowed are {sorted(by_name)}")
    return {by_name[n]: n for n in names}


def _all_experiments(client: MlflowClient) -> list:
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def search_all_runs(client: MlflowClient, experiment_ids: Iterable[str]) -> list[Run]:
    """Return every active run of the experiments (all pages)."""
    runs, ids, token = [], list(experiment_ids), None
    if not ids:
        return runs
    while True:
        page = client.search_runs(ids, run_view_type=ViewType.ACTIVE_ONLY, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def parse_param(text: str) -> Any:
    """Return the Python value of an MLflow param string ("16" -> 16, "None" -> None)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def flatten_config(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return {"section.field": value} of a nested config dict."""
    flat = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclasses.dataclass(frozen=True)
class ArtifactReader:
    """Reads a run's artifacts through MLflow, or from a served store's folder on this disk."""

    client: MlflowClient
    # The `--artifacts-destination` of the `mlflow server` that stored them: a run logged
    # through a server has `mlflow-artifacts:` URIs, which only a server can resolve, so
    # reading its SQLite store directly needs this folder.
    served_root: Path | None = None

    def _local(self, run: Run) -> Path | None:
        uri = run.info.artifact_uri or ""
        if self.served_root is None or not uri.startswith("mlflow-artifacts:"):
            return None
        return self.served_root / urlparse(uri).path.lstrip("/")

    def names(self, run: Run) -> set[str]:
        """Return the names of the run's top-level artifacts (CorruptRunError if unreadable)."""
        local = self._local(run)
        if local is not None:
            return {p.name for p in local.iterdir()} if local.is_dir() else set()
        try:
            return {f.path for f in self.client.list_artifacts(run.info.run_id)}
        except (MlflowException, OSError) as error:
            raise CorruptRunError(self._unreadable(run, error)) from error

    def download(self, run: Run, name: str, tmp: str) -> str:
        """Return a local path of the artifact `name` (CorruptRunError if unreadable)."""
        local = self._local(run)
        if local is not None:
            return str(local / name)
        try:
            return self.client.download_artifacts(run.info.run_id, name, tmp)
        except (MlflowException, OSError) as error:
            raise CorruptRunError(self._unreadable(run, error)) from error

    @staticmethod
    def _unreadable(run: Run, error: Exception) -> str:
        hint = ""
        if (run.info.artifact_uri or "").startswith("mlflow-artifacts:"):
            hint = "; pass the server's folder as --artifacts-destination, or its http:// URI"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"artifacts at {run.info.artifact_uri} unreadable ({first_line}){hint}"


def served_artifacts_beside(tracking_uri: str | None) -> Path | None:
    """Return the `mlartifacts` folder beside a SQLite store, where the launcher serves them."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return folder if folder.is_dir() else None


def fetch_run(reader: ArtifactReader, run: Run, experiment: str) -> tuple[dict, pd.DataFrame]:
    """Return (record, curves) of a finished run, downloading its artifacts; CorruptRunError."""
    info, data = run.info, run.data
    with tempfile.TemporaryDirectory(prefix="iterconv-aggregate-") as tmp:
        names = reader.names(run)
        config = (
            _read_config(reader.download(run, CONFIG_ARTIFACT, tmp))
            if CONFIG_ARTIFACT in names
            else {}
        )
        if CURVES_ARTIFACT in names:
            curves = _read_curves(reader.download(run, CURVES_ARTIFACT, tmp))
        else:
            curves = _curves_from_metrics(reader.client, run)
    params = {k: parse_param(v) for k, v in data.params.items() if k not in config}
    metrics = {
        k: float(v) for k, v in data.metrics.items() if not k.startswith(CURVE_METRIC_PREFIX)
    }
    record = {
        "run_id": info.run_id,
        "run_name": info.run_name or "",
        "experiment": experiment,
        "status": info.status,
        "grid": data.tags.get("grid", experiment),
        "trial_id": data.tags.get("ray_trial_id"),
        "git_commit": data.tags.get("git_commit"),
        "start_time": _timestamp(info.start_time),
        "end_time": _timestamp(info.end_time),
        **config,
        **params,
        **metrics,
    }
    curves.insert(0, "run_id", info.run_id)
    return record, curves


def _read_config(path: str) -> dict[str, Any]:
    try:
        nested = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptRunError(f"corrupt artifact {CONFIG_ARTIFACT}: {error}") from error
    if not isinstance(nested, dict):
        raise CorruptRunError(f"corrupt artifact {CONFIG_ARTIFACT}: not a JSON object")
    return flatten_config(nested)


def _read_curves(path: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types on a damaged file
        message = str(error).replace(path, CURVES_ARTIFACT).splitlines()[0]
        raise CorruptRunError(f"corrupt artifact {CURVES_ARTIFACT}: {message}") from error
    return _checked_curves(frame, CURVES_ARTIFACT)


def _curves_from_metrics(client: MlflowClient, run: Run) -> pd.DataFrame:
    # Older runs without the artifact: the stepped metrics hold the same numbers.
    rows = []
    for key in sorted(run.data.metrics):
        if not key.startswith(CURVE_METRIC_PREFIX):
            continue
        _, curve, stage = key.split("/", 2)
        for metric in client.get_metric_history(run.info.run_id, key):
            rows.append((int(stage.removeprefix("stage")), curve, metric.step, metric.value))
    frame = pd.DataFrame(rows, columns=["stage", "curve", "step", "error"])
    return _checked_curves(frame, f"{CURVES_ARTIFACT} (missing) or {CURVE_METRIC_PREFIX}* metrics")


def _checked_curves(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in CURVE_COLUMNS[1:] if c not in frame.columns]
    if missing:
        raise CorruptRunError(f"corrupt artifact {source}: missing columns {missing}")
    if frame.empty:
        raise CorruptRunError(f"corrupt artifact {source}: no rows")
    unknown = sorted(set(frame["curve"].astype(str)) - set(CURVE_NAMES))
    if unknown:
        raise CorruptRunError(f"corrupt artifact {source}: unknown curves {unknown}")
    try:
        return pd.DataFrame(
            {
                "stage": frame["stage"].astype("int64"),
                "curve": frame["curve"].astype(str),
                "step": frame["step"].astype("int64"),
                "error": frame["error"].astype("float64"),
            }
        )
    except (ValueError, TypeError) as error:
        raise CorruptRunError(f"corrupt artifact {source}: {error}") from error


def _timestamp(milliseconds: int | None) -> pd.Timestamp | None:
    if milliseconds is None:
        return None
    return pd.Timestamp(milliseconds, unit="ms", tz="UTC")


def aggregate(
    reader: ArtifactReader,
    experiments: Sequence[str] | None = None,
    previous: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    workers: int = 8,
    progress: bool = True,
    report: typing.Callable[[str], None] | None = None,
) -> Aggregation:
    """Return the tables of all finished runs, reusing unchanged rows of `previous`."""
    # Our own progress bar counts runs; MLflow's would print one bar per artifact.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = reader.client
    chosen = select_experiments(client, experiments)
    old_runs, old_curves = previous if previous is not None else (None, None)
    old = _old_records(old_runs, old_curves)
    records, curves, skipped, to_fetch, reused = [], [], [], [], 0
    for run in search_all_runs(client, chosen):
        info, name = run.info, chosen[run.info.experiment_id]
        if info.status != "FINISHED":
            running = info.status in ("RUNNING", "SCHEDULED")
            reason = f"status {info.status}" + (" (still running)" if running else "")
            skipped.append(SkippedRun(info.run_id, info.run_name or "", name, reason))
            continue
        kept = old.get(info.run_id)
        if kept is not None and kept[0]["end_time"] == _timestamp(info.end_time):
            records.append(kept[0])
            curves.append(kept[1])
            reused += 1
        else:
            to_fetch.append((run, name))
    fetched = _fetch_all(reader, to_fetch, workers, progress)
    for (run, name), outcome in zip(to_fetch, fetched, strict=True):
        if isinstance(outcome, CorruptRunError):
            skipped.append(SkippedRun(run.info.run_id, run.info.run_name or "", name, str(outcome)))
        else:
            records.append(outcome[0])
            curves.append(outcome[1])
    # Rows of experiments not asked for this time stay, so grids can be aggregated one by one.
    for record, run_curves in old.values():
        if record["experiment"] not in chosen.values():
            records.append(record)
            curves.append(run_curves)
            reused += 1
    skipped.sort(key=lambda s: (s.experiment, s.run_name, s.run_id))
    for item in skipped:
        (report or _stderr)(item.message())
    runs_table = runs_frame(records)
    return Aggregation(
        runs=runs_table,
        curves=curves_frame(curves, runs_table["run_id"]),
        fetched=len(to_fetch),
        reused=reused,
        skipped=tuple(skipped),
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _fetch_all(
    reader: ArtifactReader, todo: list[tuple[Run, str]], workers: int, progress: bool
) -> list[tuple[dict, pd.DataFrame] | CorruptRunError]:
    def one(item: tuple[Run, str]) -> tuple[dict, pd.DataFrame] | CorruptRunError:
        try:
            return fetch_run(reader, *item)
        except CorruptRunError as error:
            return error

    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, todo)
        bar = tqdm(results, total=len(todo), desc="fetching runs", unit="run", disable=not progress)
        return list(bar)


def _old_records(
    runs: pd.DataFrame | None, curves: pd.DataFrame | None
) -> dict[str, tuple[dict, pd.DataFrame]]:
    if runs is None or runs.empty:
        return {}
    by_run = dict(tuple(curves.groupby("run_id", sort=False))) if curves is not None else {}
    old = {}
    for row in runs.to_dict("records"):
        run_curves = by_run.get(row["run_id"])
        if run_curves is None:
            continue  # no curves: fetch the run again
        record = {k: _python(v) for k, v in row.items()}
        old[record["run_id"]] = (record, run_curves[list(CURVE_COLUMNS)].reset_index(drop=True))
    return old


def _python(value: Any) -> Any:
    """Return a plain Python value of a cell read back from Parquet (NA -> None)."""
    if isinstance(value, pd.Timestamp):
        return value
    if value is None or (not isinstance(value, str | bytes) and _is_na(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _is_na(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """Return the typed, sorted runs table of run records (schema: module docstring)."""
    keys = sorted({k for r in records for k in r} - set(BASE_COLUMNS) - set(TIME_COLUMNS))
    declared = declared_config_types()
    columns = {}
    for name in BASE_COLUMNS:
        values = [r.get(name) for r in records]
        columns[name] = pd.array([None if v is None else str(v) for v in values], dtype="string")
    for name in TIME_COLUMNS:
        values = [r.get(name) for r in records]
        columns[name] = pd.Series(pd.to_datetime(values, utc=True)).astype("datetime64[ms, UTC]")
    config_keys = [k for k in keys if "." in k]
    metric_keys = [k for k in keys if "." not in k]
    for name in config_keys:
        columns[name] = typed_column([r.get(name) for r in records], declared.get(name))
    for name in metric_keys:
        values = [r.get(name) for r in records]
        columns[name] = pd.array([math.nan if v is None else v for v in values], dtype="float64")
    frame = pd.DataFrame({k: pd.Series(v).reset_index(drop=True) for k, v in columns.items()})
    frame = frame.sort_values(["experiment", "run_name", "run_id"], kind="stable")
    return frame.reset_index(drop=True)


def typed_column(
    values: list[Any], declared: type | None = None
) -> pd.api.extensions.ExtensionArray:
    """Return values as one typed array: bool, int, float or string (nullable where None)."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present} or ({declared} if declared else set())
    nulls = len(present) < len(values)
    if kinds == {bool}:
        return pd.array(values, dtype="boolean" if nulls else "bool")
    numeric = bool(kinds) and kinds <= {int, float}
    if numeric and (float in kinds or declared is float):
        return pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
    if numeric:
        return pd.array(values, dtype="Int64" if nulls else "int64")
    if not kinds:
        return pd.array(values, dtype="string")
    # str, or a mix: keep the text MLflow would show
    return pd.array([None if v is None else _text(v) for v in values], dtype="string")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def declared_config_types() -> dict[str, type]:
    """Return {flat key: bool, int, float or str} from pipeline.config, if importable."""
    try:
        from pipeline.config import TrialConfig
    except ImportError:
        return {}
    return _field_types(TrialConfig, "")


def _field_types(cls: type, prefix: str) -> dict[str, type]:
    types = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            types.update(_field_types(hint, f"{field.name}."))
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if len(args) == 1 and args[0] in (bool, int, float, str):
            types[f"{prefix}{field.name}"] = args[0]
    return types


def curves_frame(parts: list[pd.DataFrame], run_ids: Iterable[str]) -> pd.DataFrame:
    """Return the long curves table of the kept runs, sorted (schema: module docstring)."""
    keep = set(run_ids)
    parts = [p for p in parts if not p.empty and p["run_id"].iloc[0] in keep]
    if not parts:
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in CURVE_COLUMNS})
    else:
        frame = pd.concat(parts, ignore_index=True)
    frame = pd.DataFrame(
        {
            "run_id": frame["run_id"].astype("string"),
            "stage": frame["stage"].astype("int64"),
            "curve": frame["curve"].astype("string"),
            "step": frame["step"].astype("int64"),
            "error": frame["error"].astype("float64"),
        }
    )
    frame = frame.sort_values(["run_id", "stage", "curve", "step"], kind="stable")
    return frame.reset_index(drop=True)


def read_tables(directory: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Return (runs, curves) read from a results directory, or None if absent."""
    directory = Path(directory)
    runs, curves = directory / RUNS_FILE, directory / CURVES_FILE
    if not runs.exists() or not curves.exists():
        return None
    return pd.read_parquet(runs), pd.read_parquet(curves)


def write_tables(result: Aggregation, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write runs.parquet and curves.parquet atomically; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / RUNS_FILE, directory / CURVES_FILE
    for frame, path in zip((result.runs, result.curves), paths, strict=True):
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return paths


def aggregate_to(
    tracking_uri: str | None,
    out: str | os.PathLike,
    experiments: Sequence[str] | None = None,
    workers: int = 8,
    progress: bool = True,
    artifacts_destination: str | os.PathLike | None = None,
) -> Aggregation:
    """Aggregate the tracking store into `out`, reusing what `out` already holds."""
    served = artifacts_destination or served_artifacts_beside(tracking_uri)
    reader = ArtifactReader(MlflowClient(tracking_uri=tracking_uri), served and Path(served))
    previous = read_tables(out)
    result = aggregate(reader, experiments, previous, workers=workers, progress=progress)
    write_tables(result, out)
    return result
