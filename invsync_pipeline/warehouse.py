"""The DuckDB warehouse: opening it, creating its tables, and running the SQL files in sql/.

DuckDB allows one read-write process at a time, and a read-only reader in another process
blocks the writer too. Only asset runs open it for writing, and they share the Dagster
concurrency pool ``duckdb_writer`` (limit 1); everyone else opens it read-only or reads an
exported copy. Whoever finds the file locked waits for it (``duckdb.lock_wait_seconds``) and
then fails saying which process holds it, instead of failing at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import duckdb

from invsync_pipeline import plant_scope
from invsync_pipeline.settings import PROJECT_ROOT

log = logging.getLogger("invsync.warehouse")

SQL_DIR = PROJECT_ROOT / "sql"
# The Dagster pool every run that writes DuckDB joins (a plant's own, in a plant's code location);
# its limit must be 1 (scripts/dagster-home).
DUCKDB_WRITER_POOL = plant_scope.DUCKDB_WRITER_POOL
SCHEMA_FILES = (
    "staging.sql",
    "ledger.sql",
    "snapshots.sql",
    "recon.sql",
    "corrections.sql",
    "reports.sql",
    "cutover.sql",
)


@cache
def sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (e.g. ``staging/inventory_events``)."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; invsync runs from a checkout that has sql/")
    return path.read_text()


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    for name in SCHEMA_FILES:
        conn.execute((SQL_DIR / "schema" / name).read_text())


class WarehouseBusy(duckdb.IOException):
    """The warehouse file stayed locked by another process for the whole wait."""


def _connect(path: Path, read_only: bool, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, waiting while another process holds the file's lock (a run writing, an
    analyst's session left open), with a growing pause up to 2 s."""
    deadline = time.monotonic() + wait_seconds
    pause, warned = 0.1, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() + pause > deadline:
                raise WarehouseBusy(
                    f"{exc} -- waited {wait_seconds:.0f} s (duckdb.lock_wait_seconds) for {path}. A run writing "
                    "holds it for minutes at most; a session left open in DuckDB holds it until closed: "
                    "analysts query analyst.duckdb or the exports instead (docs/analysts.md)"
                ) from None
            if not warned:
                log.warning("%s is locked by another process; waiting up to %.0f s (%s)", path, wait_seconds, exc)
                warned = True
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def connect_warehouse(
    path: str | Path, *, memory_limit: str | None = None, lock_wait_seconds: float = 0.0, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """A read-write connection with UTC as its time zone and the schema in place; close it yourself.
    ``memory_limit`` caps DuckDB's memory (settings ``duckdb.memory_limit``), ``threads`` its
    threads (``duckdb.threads``); None keeps DuckDB's default.
    ``lock_wait_seconds``: how long to wait while another process holds the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, False, lock_wait_seconds)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            conn.execute(f"SET memory_limit = '{memory_limit}'")  # validated by settings: digits and a unit
        if threads:
            conn.execute(f"SET threads = {int(threads)}")
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def open_warehouse(
    path: str | Path, *, read_only: bool = False, lock_wait_seconds: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with UTC as its time zone; the schema is created when opened for writing."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, read_only, lock_wait_seconds)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        if not read_only:
            ensure_schema(conn)
        yield conn
    finally:
        conn.close()
