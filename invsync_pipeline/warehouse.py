"""The DuckDB warehouse: opening it, creating its tables, and running the SQL files in sql/.

DuckDB allows one read-write process at a time. Only asset runs open it for writing, and they
share the Dagster concurrency pool ``duckdb_writer`` (limit 1); everyone else opens it
read-only or reads an exported copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import duckdb

from invsync_pipeline.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"
# The Dagster pool every run that writes DuckDB joins; its limit must be 1 (scripts/dagster-home).
DUCKDB_WRITER_POOL = "duckdb_writer"
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


def connect_warehouse(path: str | Path, *, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-write connection with UTC as its time zone and the schema in place; close it yourself.
    ``memory_limit`` caps DuckDB's memory (settings ``duckdb.memory_limit``); None keeps its default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path))
    try:
        conn.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            conn.execute(f"SET memory_limit = '{memory_limit}'")  # validated by settings: digits and a unit
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def open_warehouse(path: str | Path, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with UTC as its time zone; the schema is created when opened for writing."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path), read_only=read_only)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        if not read_only:
            ensure_schema(conn)
        yield conn
    finally:
        conn.close()
