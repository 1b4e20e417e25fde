"""Tables that are replaced together: after a crash, readers see the old set or the new one.

Protocol: each new table is written beside its old one as `.NAME.new`; then a journal listing
them is renamed into place (the commit point); then each `.new` is renamed over its table and
the journal removed. A crash before the commit leaves the old set (the `.new` files are
cleared later); a crash after it is completed by the next reader or writer (`recover`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

JOURNAL = ".tables-commit.json"


def write_tables_together(frames: Mapping[str, pd.DataFrame], directory: str | os.PathLike) -> None:
    """Write each frame to directory/NAME (Parquet) so that all are replaced or none is."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover(directory)
    staged = {}
    for name, frame in frames.items():
        new = directory / f".{name}.new"
        frame.to_parquet(new, index=False)
        _fsync(new)
        staged[name] = new.name
    journal = directory / (JOURNAL + ".tmp")
    journal.write_text(json.dumps(staged, sort_keys=True))
    _fsync(journal)
    _replace(journal, directory / JOURNAL)  # the commit point
    _fsync(directory)
    _apply(directory)


def read_tables_together(
    directory: str | os.PathLike, names: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Return {name: table} of those of the named tables that exist, after `recover`."""
    directory = Path(directory)
    if directory.is_dir():
        recover(directory)  # a write interrupted after its commit point
    return {
        name: pd.read_parquet(directory / name) for name in names if (directory / name).exists()
    }


def recover(directory: str | os.PathLike) -> None:
    """Finish a committed write that was interrupted; clear the files of an uncommitted one."""
    directory = Path(directory)
    if (directory / JOURNAL).exists():
        _apply(directory)
        print(f"completed an interrupted write of the tables in {directory}", file=sys.stderr)
    for stale in [*directory.glob(".*.new"), directory / (JOURNAL + ".tmp")]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _apply(directory: Path) -> None:
    """Rename the journal's new tables over the old ones, then remove the journal."""
    journal = directory / JOURNAL
    staged = json.loads(journal.read_text())
    for name, new in sorted(staged.items()):
        if (directory / new).exists():  # absent: renamed before an earlier crash
            _replace(directory / new, directory / name)
    _fsync(directory)
    journal.unlink()
    _fsync(directory)


def _replace(source: Path, target: Path) -> None:
    """Rename source over target (atomic on POSIX)."""
    os.replace(source, target)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
