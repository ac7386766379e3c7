"""Movements a correction compensated by an adjustment: their late originals are refused as such.

When a correction has to be an adjustment (the rules say the system that lacks a movement is
right, so the other system's booking is undone; or the MES refused the movement itself), the
movement may still arrive later: from a retry tier, a stranded dead-letter path, or a `dlq
replay`. It must not then land as well, or its effect would count twice. So the correction
registers each movement it compensates, for the system that lacked it, *before* it is
published, and the sync worker looks every event up here before applying it.

A correction that re-sends the movements themselves needs no entry: the late original is then a
duplicate of the same transaction_id, and idempotency refuses it. The registry lives in
``ops.sqlite`` beside the alerts (several processes write and read it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime

from invsync_pipeline.ops.store import ops_db
from invsync_pipeline.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS compensated (
    transaction_id TEXT NOT NULL,  -- the movement whose late arrival must not land
    system         TEXT NOT NULL,  -- in this system: ERP | MES
    correction_id  TEXT NOT NULL,  -- recon.corrections: the adjustment that stands for it
    registered_at  TEXT NOT NULL,
    PRIMARY KEY (transaction_id, system)
)
"""


def registry(settings: Settings, *, any_thread: bool = False) -> sqlite3.Connection:
    db = ops_db(settings, any_thread=any_thread)
    db.execute(_SCHEMA)
    return db


def register(settings: Settings, correction_id: str, system: str, transaction_ids: Iterable[str]) -> None:
    """Record that ``correction_id`` compensates these movements in ``system`` (idempotent)."""
    now = datetime.now(UTC).isoformat()
    db = registry(settings)
    try:
        db.executemany(
            "INSERT OR IGNORE INTO compensated VALUES (?, ?, ?, ?)",
            [(tx, system, correction_id, now) for tx in transaction_ids],
        )
    finally:
        db.close()


def compensated_by(db: sqlite3.Connection, transaction_id: str, system: str) -> str | None:
    """The correction that compensated this movement in ``system``, or None."""
    row = db.execute(
        "SELECT correction_id FROM compensated WHERE transaction_id = ? AND system = ?", (transaction_id, system)
    ).fetchone()
    return row[0] if row else None


def compensated_many(db: sqlite3.Connection, transaction_ids: list[str], system: str) -> dict[str, str]:
    """``compensated_by`` for many at once: transaction_id -> correction_id, for those compensated."""
    found: dict[str, str] = {}
    for start in range(0, len(transaction_ids), 500):
        chunk = transaction_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(
            f"SELECT transaction_id, correction_id FROM compensated WHERE system = ? AND transaction_id IN ({marks})",
            [system, *chunk],
        ).fetchall())  # fmt: skip
    return found
