"""MLflow runs -> `runs.parquet` and `curves.parquet`, incrementally (docs/results.md).

Schema of `runs.parquet`, one row per FINISHED run, sorted by (experiment, run_name, run_id):

- `run_id`, `run_name`, `experiment`, `status` (always "FINISHED"), `grid`, `trial_id`
  (tag `ray_trial_id`), `git_commit` (tag; null if absent): strings.
- `start_time`, `end_time`: timestamp[ms, UTC].
- `diverged`: bool, the run's tag `diverged` (its training loss became non-finite; its
  `final_test_error` is the task's chance error and its indices are NaN).
- `dropped_run_ids`: list of strings, the older finished runs of the same configuration
  (every flat key but the run-local ones, the seed included) that this row replaces.
- one column per flat config key ("model.width", "coupling.lam", "data.train_size", ...) with
  the type TrialConfig declares: int64, float64, bool or string; nullable Int64 / boolean where
  some runs hold None. The values are the run's `config.json` artifact (else its params) read
  through `TrialConfig.from_dict`; keys this version's TrialConfig no longer has are left out.
- one float64 column per final metric: final_test_error, final_test_loss, final_train_loss,
  parameters, train_seconds, ci, ri, di, ci_stage1..3, ri_stage1..3, di_stage1..3, and the last
  value of every per-epoch metric (epoch, test_error, ...). The stepped `curve/...` metrics are
  not columns: they are `curves.parquet`.

Schema of `curves.parquet`, sorted by (run_id, stage, curve, step):
`run_id` string, `stage` int64 (1..3), `curve` string ("readout" | "dropout" | "extra"),
`step` int64 (block t for readout/dropout, extra evaluations k for extra), `error` float64.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm import tqdm

import vocabulary
from analysis.table_pair import read_tables_together, write_tables_together
from models.typed_fields import allowed_types
from pipeline.config import SECTIONS, TrialConfig, flat_keys, identity_keys, parse_value
from pipeline.run_contents import (
    CONFIG_ARTIFACT,
    CURVE_METRIC_PREFIX,
    CURVES_ARTIFACT,
    DIVERGED_TAG,
    GIT_COMMIT_TAG,
    GRID_TAG,
    TRIAL_ID_TAG,
)

RUNS_FILE = "runs.parquet"
CURVES_FILE = "curves.parquet"
ARTIFACTS = (CONFIG_ARTIFACT, CURVES_ARTIFACT)
BASE_COLUMNS = ("run_id", "run_name", "experiment", "status", "grid", "trial_id", "git_commit")
TIME_COLUMNS = ("start_time", "end_time")
DIVERGED, DROPPED = "diverged", "dropped_run_ids"
# The columns read from a run's tags, by tag.
TAG_COLUMNS = {GRID_TAG: "grid", TRIAL_ID_TAG: "trial_id", GIT_COMMIT_TAG: "git_commit"}
TAG_COLUMNS[DIVERGED_TAG] = DIVERGED
CURVE_COLUMNS = ("run_id", *vocabulary.CURVE_COLUMNS)
CURVE_DTYPES = dict(
    zip(CURVE_COLUMNS, ("string", "int64", "string", "int64", "float64"), strict=True)
)
STILL = {"RUNNING": " (still running)", "SCHEDULED": " (still running)"}
# The pandas dtype of a config column by its field's type: (no run holds None, some do).
DTYPES = {
    bool: ("bool", "boolean"),
    int: ("int64", "Int64"),
    float: ("float64", "float64"),
    str: ("string", "string"),
}


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


@functools.cache
def config_types() -> dict[str, type]:
    """Return {flat key: bool, int, float or str}, the types TrialConfig declares (None aside)."""
    types = {}
    for key in flat_keys():
        section, name = key.split(".")
        allowed = allowed_types(SECTIONS[section], name)
        types[key] = next(t for t in allowed if t is not type(None))
    return types


def _all_pages(search: Callable, *args: Any, **kwargs: Any) -> list:
    """Return the items of every page of an MLflow search."""
    items, token = [], None
    while True:
        page = search(*args, page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


def select_experiments(client: MlflowClient, names: Sequence[str] | None) -> dict[str, str]:
    """Return {experiment_id: name} of the named experiments, or of all active ones if None."""
    experiments = _all_pages(client.search_experiments, view_type=ViewType.ACTIVE_ONLY)
    by_name = {e.name: e.experiment_id for e in experiments}
    if not names:
        return {i: n for n, i in by_name.items()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}: allowed are {sorted(by_name)}")
    return {by_name[n]: n for n in names}


def search_runs(client: MlflowClient, experiments: dict[str, str]) -> dict[str, Run]:
    """Return {run_id: Run} of every active run of the experiments (all pages)."""
    if not experiments:
        return {}
    runs = _all_pages(client.search_runs, list(experiments), run_view_type=ViewType.ACTIVE_ONLY)
    return {run.info.run_id: run for run in runs}


def runs_table(runs: dict[str, Run], experiments: dict[str, str]) -> pd.DataFrame:
    """Return what the search tells of each run, one row per run: names, status, times."""
    # The TAG_COLUMNS are tags; the rest is the run's info.
    rows = [
        {TAG_COLUMNS.get(tag, tag): value for tag, value in run.data.tags.items()} | dict(run.info)
        for run in runs.values()
    ]
    table = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *TIME_COLUMNS, DIVERGED, "experiment_id"])
    table[DIVERGED] = table[DIVERGED].eq("true")
    table["experiment"] = table["experiment_id"].map(experiments)
    table["grid"] = table["grid"].fillna(table["experiment"])
    table["run_name"] = table["run_name"].fillna("")
    for column in TIME_COLUMNS:
        table[column] = pd.to_datetime(table[column], unit="ms", utc=True)
    return table.astype({c: "datetime64[ms, UTC]" for c in TIME_COLUMNS}).drop(
        columns="experiment_id"
    )


def final_metrics(run: Run) -> dict[str, float]:
    """Return the last value of each metric of a run, but the stepped curves."""
    metrics = run.data.metrics.items()
    return {k: float(v) for k, v in metrics if not k.startswith(CURVE_METRIC_PREFIX)}


@dataclasses.dataclass(frozen=True)
class ArtifactReader:
    """Reads a run's artifacts through MLflow, or from a served store's folder on this disk."""

    client: MlflowClient
    # The `--artifacts-destination` of the `mlflow server` that stored them: a run logged
    # through a server has `mlflow-artifacts:` URIs, which only a server can resolve, so
    # reading its SQLite store directly needs this folder.
    served_root: Path | None = None

    def paths(self, run: Run, tmp: str) -> dict[str, Path]:
        """Return {name: local file} of those of the run's artifacts that we read."""
        uri, run_id = run.info.artifact_uri or "", run.info.run_id
        try:
            if self.served_root is not None and uri.startswith("mlflow-artifacts:"):
                folder = self.served_root / urlparse(uri).path.lstrip("/")
                return {n: folder / n for n in ARTIFACTS if (folder / n).exists()}
            present = {f.path for f in self.client.list_artifacts(run_id)} & set(ARTIFACTS)
            return {n: Path(self.client.download_artifacts(run_id, n, tmp)) for n in present}
        except (MlflowException, OSError, RuntimeError) as error:  # RuntimeError: symlink loop
            hint = ""
            if uri.startswith("mlflow-artifacts:"):
                hint = "; pass the server's folder as --artifacts-destination, or its http:// URI"
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CorruptRunError(f"artifacts at {uri} unreadable ({first_line}){hint}") from error


def served_artifacts_beside(tracking_uri: str | None) -> Path | None:
    """Return the `mlartifacts` folder beside a SQLite store, where the launcher serves them."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return folder if folder.is_dir() else None


def fetch_run(reader: ArtifactReader, run: Run) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return (flat typed config, curves) of a finished run from its artifacts; CorruptRunError."""
    with tempfile.TemporaryDirectory(prefix="iterconv-aggregate-") as tmp:
        paths = reader.paths(run, tmp)
        if CURVES_ARTIFACT not in paths:
            raise CorruptRunError(f"no artifact {CURVES_ARTIFACT}")
        # A diverged run has no curves: its network never left chance.
        curves = _read_curves(
            paths[CURVES_ARTIFACT], empty_ok=run.data.tags.get(DIVERGED_TAG) == "true"
        )
        if CONFIG_ARTIFACT in paths:
            config = _read_config(paths[CONFIG_ARTIFACT])
        else:  # the params hold the same config, as text
            config = _config_from_params(run.data.params)
    return config, curves.assign(run_id=run.info.run_id)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        nested = json.loads(path.read_text())
        flat = {f"{s}.{k}": v for s, fields in nested.items() for k, v in fields.items()}
        known = {k: v for k, v in flat.items() if k in config_types()}
        return TrialConfig.from_dict(known).to_flat_dict()
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        raise CorruptRunError(f"corrupt artifact {CONFIG_ARTIFACT}: {error}") from error


def _config_from_params(params: dict[str, str]) -> dict[str, Any]:
    try:
        typed = {k: parse_value(k, v) for k, v in params.items() if k in config_types()}
        return TrialConfig.from_dict(typed).to_flat_dict()
    except ValueError as error:
        raise CorruptRunError(f"no {CONFIG_ARTIFACT}, and params are no config: {error}") from error


def _read_curves(path: Path, empty_ok: bool = False) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types on a damaged file
        message = str(error).replace(str(path), CURVES_ARTIFACT).splitlines()[0]
        raise CorruptRunError(f"corrupt artifact {CURVES_ARTIFACT}: {message}") from error
    missing = [c for c in vocabulary.CURVE_COLUMNS if c not in frame.columns]
    unknown = sorted(set(frame.get("curve", pd.Series()).astype(str)) - set(vocabulary.CURVES))
    problem = (
        (missing and f"missing columns {missing}")
        or (frame.empty and not empty_ok and "no rows")
        or (unknown and f"unknown curves {unknown}")
    )
    if problem:
        raise CorruptRunError(f"corrupt artifact {CURVES_ARTIFACT}: {problem}")
    try:
        return curves_frame(frame.assign(run_id=""))
    except (ValueError, TypeError) as error:
        raise CorruptRunError(f"corrupt artifact {CURVES_ARTIFACT}: {error}") from error


@dataclasses.dataclass(frozen=True)
class FetchPlan:
    """Which runs found need their artifacts fetched, and which rows of the previous tables stay."""

    todo: pd.DataFrame  # finished runs not in the previous tables, or changed since: fetched
    kept: pd.DataFrame  # rows of the previous runs table that stay as they are
    kept_curves: pd.DataFrame  # the previous curves of the kept rows
    unfinished: list[SkippedRun]  # runs still running, failed or killed


def plan_fetch(
    found: pd.DataFrame,
    experiments: Collection[str],
    previous: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> FetchPlan:
    """Return what to fetch of the runs found in `experiments`, and what of `previous` stays."""
    old_runs, old_curves = previous or (runs_frame(found.iloc[:0]), curves_frame(None))
    # A row whose curves are lost is fetched again (a diverged run never had any).
    old_runs = old_runs[old_runs["run_id"].isin(old_curves["run_id"]) | old_runs[DIVERGED]]
    done = (found["status"] == "FINISHED").to_numpy()
    unfinished = [
        SkippedRun(
            r.run_id, r.run_name, r.experiment, f"status {r.status}{STILL.get(r.status, '')}"
        )
        for r in found[~done].itertuples()
    ]
    # A run already aggregated with the same end time is reused, not fetched again.
    keys = ["run_id", "end_time"]
    same = (
        found[keys].merge(old_runs[keys], how="left", indicator=True)["_merge"] == "both"
    ).to_numpy()
    # Rows of experiments not asked for this time stay, so grids can be aggregated one by one.
    kept = old_runs[
        old_runs["run_id"].isin(found["run_id"][done & same])
        | ~old_runs["experiment"].isin(experiments)
    ]
    kept_curves = old_curves[old_curves["run_id"].isin(kept["run_id"])]
    return FetchPlan(found[done & ~same], kept, kept_curves, unfinished)


def fetch_rows(
    reader: ArtifactReader, todo: pd.DataFrame, by_id: dict[str, Run], workers: int, progress: bool
) -> tuple[pd.DataFrame, list[pd.DataFrame], list[SkippedRun]]:
    """Return the rows of the runs to fetch (search, config, metrics), their curves, the corrupt."""
    configs, metrics, curves, corrupt = {}, {}, [], []
    outcomes = _fetch_all(reader, todo, by_id, workers, progress)
    for run, outcome in zip(todo.itertuples(), outcomes, strict=True):
        if isinstance(outcome, CorruptRunError):
            corrupt.append(SkippedRun(run.run_id, run.run_name, run.experiment, str(outcome)))
            continue
        configs[run.run_id], metrics[run.run_id] = outcome[0], final_metrics(by_id[run.run_id])
        curves.append(outcome[1])
    new = todo.set_index("run_id").loc[list(configs)]
    for values in (configs, metrics):
        new = new.join(pd.DataFrame.from_dict(values, orient="index"))
    return new.reset_index(), curves, corrupt


def merge_tables(
    plan: FetchPlan, new: pd.DataFrame, new_curves: Sequence[pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the runs and curves tables of the kept rows and the new ones, newest per config."""
    parts = [p for p in (plan.kept, new) if len(p)]
    runs = runs_frame(pd.concat(parts, ignore_index=True) if parts else plan.kept)
    runs = keep_newest_per_configuration(runs)
    curves = curves_frame(pd.concat([plan.kept_curves, *new_curves], ignore_index=True))
    return runs, curves[curves["run_id"].isin(runs["run_id"])].reset_index(drop=True)


def aggregate(
    reader: ArtifactReader,
    experiments: Sequence[str] | None = None,
    previous: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    workers: int = 8,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> Aggregation:
    """Return the tables of all finished runs, reusing unchanged rows of `previous`."""
    report = report or functools.partial(print, file=sys.stderr)
    # Our own progress bar counts runs; MLflow's would print one bar per artifact.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    chosen = select_experiments(reader.client, experiments)
    by_id = search_runs(reader.client, chosen)
    plan = plan_fetch(runs_table(by_id, chosen), chosen.values(), previous)
    new, new_curves, corrupt = fetch_rows(reader, plan.todo, by_id, workers, progress)
    skipped = sorted(
        [*plan.unfinished, *corrupt], key=lambda s: (s.experiment, s.run_name, s.run_id)
    )
    for item in skipped:
        report(item.message())
    runs, curves = merge_tables(plan, new, new_curves)
    dropped = sum(len(ids) for ids in runs[DROPPED])
    if dropped:
        report(
            f"dropped {dropped} duplicate run(s): an older finished run of a configuration that "
            "a newer run repeats (their ids: column dropped_run_ids)"
        )
    return Aggregation(
        runs=runs,
        curves=curves,
        fetched=len(plan.todo),
        reused=len(plan.kept),
        skipped=tuple(skipped),
    )


def keep_newest_per_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration, the newest finished run, listing the runs it replaces."""
    # A figure grid and paper_grid share trials: logged twice, a seed would count twice
    # (n doubles, the sd shrinks). The run-local keys (data root, device, threads) do not count.
    keys = [k for k in identity_keys() if k in runs.columns]
    if runs.empty or not keys:
        return runs.assign(**{DROPPED: [[] for _ in range(len(runs))]})
    identity = runs[keys].astype("string").fillna("<NA>").agg("\x1f".join, axis=1)
    newest_first = runs.assign(_identity=identity).sort_values(
        ["end_time", "run_id"], ascending=False, kind="stable"
    )
    groups = newest_first.groupby("_identity", sort=False)["run_id"]
    dropped = {ids.iloc[0]: sorted(ids.iloc[1:]) for _, ids in groups}
    kept = runs[runs["run_id"].isin(dropped)].copy()
    kept[DROPPED] = [dropped[run_id] for run_id in kept["run_id"]]
    return kept.reset_index(drop=True)


def _fetch_all(
    reader: ArtifactReader, todo: pd.DataFrame, by_id: dict[str, Run], workers: int, progress: bool
) -> list[tuple[dict, pd.DataFrame] | CorruptRunError]:
    def one(run_id: str) -> tuple[dict, pd.DataFrame] | CorruptRunError:
        try:
            return fetch_run(reader, by_id[run_id])
        except CorruptRunError as error:
            return error
        except Exception as error:  # one bad run never ends the aggregation of the others
            first_line = (str(error).splitlines() or [""])[0]
            return CorruptRunError(f"unreadable ({type(error).__name__}: {first_line})")

    if todo.empty:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, todo["run_id"])
        bar = tqdm(results, total=len(todo), desc="fetching runs", unit="run", disable=not progress)
        return list(bar)


def runs_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the runs table typed and sorted as the module docstring says."""
    rest = sorted(set(frame.columns) - {*BASE_COLUMNS, *TIME_COLUMNS})
    config = [c for c in rest if "." in c]  # flat config keys; metric names have no dot
    rest = [c for c in rest if c not in (DIVERGED, DROPPED)]
    columns = {c: frame[c].astype("string") for c in BASE_COLUMNS}
    columns |= {c: frame[c].astype("datetime64[ms, UTC]") for c in TIME_COLUMNS}
    diverged = frame[DIVERGED] if DIVERGED in frame else pd.Series(False, index=frame.index)
    columns[DIVERGED] = diverged.fillna(False).astype(bool)
    for name in config:
        declared = config_types().get(name)
        if declared is None:  # a key of an older TrialConfig, in rows aggregated back then
            columns[name] = frame[name]
            continue
        values = [None if pd.isna(v) else v for v in frame[name]]
        dtype = DTYPES[declared][None in values]
        columns[name] = pd.Series(pd.array(values, dtype=dtype), index=frame.index)
    columns |= {c: frame[c].astype("float64") for c in rest if c not in config}
    table = pd.DataFrame(columns)
    return table.sort_values(["experiment", "run_name", "run_id"], kind="stable").reset_index(
        drop=True
    )


def curves_frame(frame: pd.DataFrame | None) -> pd.DataFrame:
    """Return the long curves table, typed and sorted as the module docstring says."""
    if frame is None:
        frame = pd.DataFrame({c: [] for c in CURVE_COLUMNS})
    frame = frame.astype(CURVE_DTYPES)[list(CURVE_COLUMNS)]
    return frame.sort_values(list(CURVE_COLUMNS[:4]), kind="stable").reset_index(drop=True)


def read_tables(directory: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Return (runs, curves) read from a results directory, or None if absent."""
    tables = read_tables_together(directory, (RUNS_FILE, CURVES_FILE))
    if len(tables) < 2:
        return None
    return tables[RUNS_FILE], tables[CURVES_FILE]


def write_tables(result: Aggregation, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write runs.parquet and curves.parquet, replaced together; return their paths."""
    directory = Path(directory)
    write_tables_together({RUNS_FILE: result.runs, CURVES_FILE: result.curves}, directory)
    return directory / RUNS_FILE, directory / CURVES_FILE


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
