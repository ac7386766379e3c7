"""The worker's own record of what it applied to the MES, with the timings that make sync lag.

One row per transaction_id: our id beside the MES's id, when the event was published, when the
MES confirmed it and when the worker acked it. It also answers "did we apply this already?"
before every POST, so a redelivered message costs no MES call.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_log (
    transaction_id     TEXT PRIMARY KEY,
    mes_transaction_id TEXT,
    status             TEXT NOT NULL,      -- applied | duplicate | not_applicable | skipped | restored
    queue              TEXT NOT NULL,
    published_ms       INTEGER,            -- publisher clock, from x-invsync-published-ms
    delivered_ms       INTEGER NOT NULL,   -- when the worker received it
    confirmed_ms       INTEGER NOT NULL,   -- when the MES answered
    acked_ms           INTEGER NOT NULL,
    attempts           INTEGER NOT NULL    -- 1 + retries so far
);
CREATE INDEX IF NOT EXISTS sync_log_acked ON sync_log (acked_ms);
"""


@dataclass(frozen=True)
class SyncRecord:
    transaction_id: str
    mes_transaction_id: str | None
    status: str
    queue: str
    published_ms: int | None
    delivered_ms: int
    confirmed_ms: int
    acked_ms: int
    attempts: int

    @property
    def lag_ms(self) -> int | None:
        """Publish to MES confirmation: how long the MES was behind the ERP for this event."""
        return None if self.published_ms is None else self.confirmed_ms - self.published_ms


class SyncLog:
    """SQLite, WAL; written by the worker's I/O thread only, read by anyone."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # The MES holds the truth of what was applied; this log is an optimisation and a
        # metric, so it does not need an fsync per row.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[tuple] = []

    def seen(self, transaction_id: str) -> str | None:
        """The MES id if this transaction was applied (or found duplicate, or restored) before."""
        with self._lock:
            row = self._conn.execute(
                "SELECT mes_transaction_id FROM sync_log"
                " WHERE transaction_id = ? AND status IN ('applied', 'duplicate', 'restored')",
                (transaction_id,),
            ).fetchone()
            if row is None:
                for pending in self._pending:
                    if pending[0] == transaction_id and pending[2] in ("applied", "duplicate", "restored"):
                        return pending[1]
        return row[0] if row else None

    def record(self, rec: SyncRecord) -> None:
        with self._lock:
            self._pending.append(
                (
                    rec.transaction_id,
                    rec.mes_transaction_id,
                    rec.status,
                    rec.queue,
                    rec.published_ms,
                    rec.delivered_ms,
                    rec.confirmed_ms,
                    rec.acked_ms,
                    rec.attempts,
                )  # fmt: skip
            )
            if len(self._pending) >= 200:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        self._conn.execute("BEGIN")
        self._conn.executemany("INSERT OR IGNORE INTO sync_log VALUES (?,?,?,?,?,?,?,?,?)", self._pending)
        self._conn.execute("COMMIT")
        self._pending.clear()

    def records(self, since_ms: int = 0) -> list[SyncRecord]:
        self.flush()
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM sync_log WHERE acked_ms >= ? ORDER BY acked_ms", (since_ms,)
            ).fetchall()
        return [SyncRecord(*row) for row in rows]

    def close(self) -> None:
        self.flush()
        self._conn.close()
