"""Aggregate MLflow runs into results/runs.parquet and results/curves.parquet.

Usage: python analysis/aggregate.py [--tracking-uri URI] [--experiment GRID ...] [--out results/]
       [--artifacts-destination DIR]
Incremental: runs already in the tables with the same end time are not fetched again.
Schemas: analysis/runs_to_tables.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from analysis.runs_to_tables import aggregate_to
from sweeps.tracking_server import server_problem


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, aggregate, and print a one-line summary; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or ./mlruns)"
    )
    parser.add_argument(
        "--experiment",
        nargs="+",
        default=None,
        metavar="GRID",
        help="experiments (grids) to aggregate; default all",
    )
    parser.add_argument("--out", default="results", help="directory of the Parquet files")
    parser.add_argument("--workers", type=int, default=8, help="parallel artifact downloads")
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
    if args.tracking_uri and args.tracking_uri.startswith(("http://", "https://")):
        problem = server_problem(args.tracking_uri)
        if problem:
            print(
                f"error: tracking server {args.tracking_uri} is not reachable ({problem})",
                file=sys.stderr,
            )
            return 2
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
    print(
        f"{len(result.runs)} runs ({result.fetched} fetched, {result.reused} unchanged), "
        f"{len(result.skipped)} skipped -> {Path(args.out) / 'runs.parquet'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
