"""The operational database: one SQLAlchemy engine for state that people and processes write at once.

Alerts and the review queue (held corrections, decisions, their audit trail) live here, not in
DuckDB, which takes one writer process at a time: sensors, the CLI, the review page and runs
all write while a run holds DuckDB. SQLite (``ops.sqlite`` under INVSYNC_HOME) by default, any
SQLAlchemy URL by ``INVSYNC_OPS_DB_URL`` (PostgreSQL for a plant), chosen the way the ERP store
chooses its database: by the URL alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def with_project_driver(url: str) -> sa.URL:
    """The URL with this project's PostgreSQL driver when none is named (the ERP store's too)."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver this project ships with
    return parsed


def ops_engine(url: str | sa.URL) -> sa.Engine:
    parsed = with_project_driver(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # WAL: the page reads while a run writes; the sqlite3 queue samples share the file and the mode.
        with contextlib.suppress(sqlite3.OperationalError):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

    return engine
