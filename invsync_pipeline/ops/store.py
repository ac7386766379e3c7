"""The operations store: open incidents, queue samples and compensations in SQLite (``ops.sqlite``).

SQLite and not DuckDB on purpose: sensors, the CLI and asset runs all write here, from several
processes at once, while DuckDB takes one writer and sensors must never open it. Alerts and the
review queue are in the operational database (``ops/database.py``: this same file by default,
PostgreSQL by INVSYNC_OPS_DB_URL).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from invsync_pipeline.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_key TEXT NOT NULL,   -- e.g. queue:plant.wh01.raw:no_consumer
    opened_at    TEXT NOT NULL,
    closed_at    TEXT,
    alert_id     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (incident_key, closed_at);
CREATE TABLE IF NOT EXISTS queue_samples (
    sampled_at TEXT NOT NULL,
    queue      TEXT NOT NULL,
    role       TEXT NOT NULL,     -- work | tap | retry | parking
    ready      INTEGER NOT NULL,
    unacked    INTEGER,           -- NULL: unknown (passive declares)
    consumers  INTEGER NOT NULL,
    source     TEXT NOT NULL,     -- management_api | rabbitmqctl | passive_declare: ...
    dead_letter INTEGER,          -- in the dead-letter path (quorum, at-least-once); NULL: unknown
    total      INTEGER            -- ready + unacked + dead_letter; NULL: unknown
);
CREATE INDEX IF NOT EXISTS queue_samples_queue ON queue_samples (queue, sampled_at);
"""
# Columns added after the first release: an older ops.sqlite gets them on first open.
_ADDED_COLUMNS = {"queue_samples": ("dead_letter INTEGER", "total INTEGER")}


def ops_db(settings: Settings, *, any_thread: bool = False) -> sqlite3.Connection:
    """A connection to ``<home>/ops.sqlite`` with the tables in place (WAL, several writers).
    ``any_thread``: usable from several threads (the caller serialises its use)."""
    path: Path = settings.home / "ops.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=not any_thread)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    return db
