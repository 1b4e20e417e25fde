"""Aggregate MLflow runs into results/runs.parquet and results/curves.parquet.

Usage: python analysis/aggregate.py [--tracking-uri URI] [--experiment GRID ...] [--out results/]
       [--artifacts-destination DIR]
Incremental: runs already in the tables with the same end time are not fetched again.
Schemas: analysis/runs_to_tables.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sweeps.tracking_server import is_http_uri, mask_uri, server_problem
from sweeps.tracking_store import check_store_exists, default_backend_store

DEFAULT_EXPERIMENT = "Default"  # the experiment MLflow makes in every store: no sweep's


def store_problem(uri: str) -> str | None:
    """Return why `uri` names no store with a sweep's experiment in it, or None if it does."""
    if is_http_uri(uri):
        problem = server_problem(uri)
        return f"tracking server {mask_uri(uri)} is not reachable ({problem})" if problem else None
    try:
        check_store_exists(uri)
    except ValueError as error:
        return str(error)
    from mlflow import MlflowClient  # only now: --help and refusals stay quick

    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    if not names - {DEFAULT_EXPERIMENT}:
        return f"--tracking-uri {mask_uri(uri)}: the store holds no experiment (no sweep ran here)"
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, aggregate, and print a one-line summary; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or default_backend_store(),
        help="the sweep's store: sqlite:///PATH.db, postgresql://... or its http(s):// server "
        "(default: MLFLOW_TRACKING_URI, else the launcher's sqlite:///./ray_results/mlflow.db)",
    )
    parser.add_argument(
        "--experiment",
        nargs="+",
        default=None,
        metavar="GRID",
        help="experiments (grids) to aggregate; default all",
    )
    parser.add_argument(
        "--out", default="results", help="directory of the Parquet files (default: results)"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="parallel artifact downloads (default: 8)"
    )
    parser.add_argument(
        "--artifacts-destination",
        default=None,
        metavar="DIR",
        help="folder where the sweep's mlflow server stored artifacts, to read them without "
        "a server (default: mlartifacts/ beside a sqlite:/// store, if it exists)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be >= 1")
    problem = store_problem(args.tracking_uri)  # reading a store never creates one
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    from analysis.runs_to_tables import aggregate_to

    try:
        result = aggregate_to(
            args.tracking_uri,
            args.out,
            args.experiment,
            workers=args.workers,
            artifacts_destination=args.artifacts_destination,
        )
    except (ValueError, MlflowException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.runs.empty:
        print(f"no runs in {mask_uri(args.tracking_uri)}: nothing to aggregate", file=sys.stderr)
    print(
        f"{len(result.runs)} runs ({result.fetched} fetched, {result.reused} unchanged), "
        f"{len(result.skipped)} skipped -> {Path(args.out) / 'runs.parquet'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
