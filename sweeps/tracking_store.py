"""What a tracking URI may be, and whether the store it names exists (docs/faults.md).

The launcher writes to a store and may create one; aggregation only reads, so a mistyped URI
must be refused there, never created as a new, empty store. Both check the URI's form here,
before anything starts. Torch-free, mlflow-free: checked in the launcher before Ray starts.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from sweeps.tracking_server import mask_uri

# The stores a sweep can log to: a tracking server, or a database that `mlflow server` serves.
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
URI_FORMS = "http(s)://HOST:PORT, sqlite:///PATH.db or postgresql://USER@HOST/DB"


DEFAULT_STORAGE = "ray_results"  # the launcher's --storage: Tune's results and the store


class StoreError(ValueError):
    """A tracking URI that is malformed, or names a store that does not exist."""


def uri_scheme(uri: str) -> str:
    """Return the database or server scheme of a URI: "postgresql+psycopg" -> "postgresql"."""
    return urlsplit(uri).scheme.split("+", 1)[0].lower()


def check_uri_form(uri: str, option: str = "--tracking-uri") -> None:
    """Raise StoreError unless `uri` is a tracking server or a database URI MLflow can serve."""
    scheme, shown = uri_scheme(uri), mask_uri(uri)
    if "://" not in uri or not scheme:
        raise StoreError(
            f"{option} {shown!r}: not a URI (a folder is MLflow's retired file store); "
            f"allowed forms are {URI_FORMS}"
        )
    if scheme not in SERVER_SCHEMES + DATABASE_SCHEMES:
        raise StoreError(
            f"{option} {shown!r}: unknown scheme {scheme!r}; allowed are "
            f"{', '.join(SERVER_SCHEMES + DATABASE_SCHEMES)} ({URI_FORMS})"
        )
    if scheme == "sqlite" and not sqlite_path(uri):
        raise StoreError(f"{option} {shown!r}: a SQLite store is sqlite:///PATH.db (three slashes)")


def sqlite_path(uri: str) -> Path | None:
    """Return the database file of a sqlite:/// URI (None for an in-memory or empty path)."""
    rest = uri.split("://", 1)[1]
    if not rest.startswith("/"):  # sqlite://NAME has a host where SQLAlchemy allows none
        return None
    path = rest.removeprefix("/").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_store_exists(uri: str, option: str = "--tracking-uri") -> None:
    """Raise StoreError unless a SQLite store at `uri` exists and holds MLflow's tables.

    Opened read-only: MLflow itself would create the file and its tables on a first
    connection, which is how a typo used to become a new, empty store.
    """
    check_uri_form(uri, option)
    if uri_scheme(uri) != "sqlite":
        return  # a server answers for itself; a database server's URI names an existing db
    path = sqlite_path(uri)
    assert path is not None  # check_uri_form refused the rest
    if not path.is_file():
        raise StoreError(f"{option} {uri}: no MLflow store there ({path} does not exist)")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{option} {uri}: {path} is not an SQLite database ({error})") from None
    if "experiments" not in tables:
        raise StoreError(f"{option} {uri}: {path} is not an MLflow store (no experiments table)")


def default_backend_store(storage: str = DEFAULT_STORAGE) -> str:
    """Return the SQLite store beside a local storage path (else in the working directory)."""
    directory = Path.cwd() if "://" in storage else Path(storage).expanduser().resolve()
    return f"sqlite:///{directory / 'mlflow.db'}"
