"""The worker's own record of what it applied to the MES, with the timings that make sync lag.

One row per transaction_id: our id beside the MES's id, when the event was published, when the
MES confirmed it and when the worker acked it. It also answers "did we apply this already?"
before every POST, so a redelivered message costs no MES call.

A row is committed before its message is acked, so a worker killed at any moment loses no row
of a message the broker will not deliver again (WAL: a commit survives the process). A message
the MES had applied before a crash comes back as a redelivery; the MES then answers
`duplicate`, and the row says `applied` with `redelivered` set, so flow metrics count it once,
as applied.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invsync_pipeline.contract import PUBLISHED_MS_HEADER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_log (
    transaction_id     TEXT PRIMARY KEY,
    mes_transaction_id TEXT,
    status             TEXT NOT NULL,      -- applied | duplicate | skipped | restored | compensated
    queue              TEXT NOT NULL,
    published_ms       INTEGER,            -- publisher clock, from x-invsync-published-ms
    delivered_ms       INTEGER NOT NULL,   -- when the worker received it
    confirmed_ms       INTEGER NOT NULL,   -- when the MES answered
    acked_ms           INTEGER NOT NULL,
    attempts           INTEGER NOT NULL,   -- 1 + retries so far
    redelivered        INTEGER NOT NULL DEFAULT 0  -- 1: the broker delivered it again (after a crash, a lost ack)
);
CREATE INDEX IF NOT EXISTS sync_log_acked ON sync_log (acked_ms);
"""


def published_ms_of(properties: Any) -> int | None:
    """When the publisher sent the message, in ms: our header, else the AMQP timestamp (whole
    seconds). None when neither is a sane number: a sender's header only measures lag, and must
    never keep its message from being logged."""
    headers = getattr(properties, "headers", None) or {}
    for value, scale in ((headers.get(PUBLISHED_MS_HEADER), 1), (getattr(properties, "timestamp", None), 1000)):
        try:
            if value is not None and not isinstance(value, bool) and 0 <= int(value) * scale < 2**63:
                return int(value) * scale
        except (TypeError, ValueError, OverflowError):
            continue
    return None


# Statuses that mean the MES has the transaction: nothing to post again.
IN_MES = ("applied", "duplicate", "restored")


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
    redelivered: bool = False

    @property
    def lag_ms(self) -> int | None:
        """Publish to MES confirmation: how long the MES was behind the ERP for this event."""
        return None if self.published_ms is None else self.confirmed_ms - self.published_ms


class SyncLog:
    """SQLite, WAL; written by the worker's I/O thread only, read by anyone."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (not a power cut); the
        # MES holds the truth of what was applied, and this log must survive the worker.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(sync_log)")}
        if "redelivered" not in columns:  # a log written before the column existed
            try:
                self._conn.execute("ALTER TABLE sync_log ADD COLUMN redelivered INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as exc:  # another worker added it at the same moment
                if "duplicate column" not in str(exc):
                    raise
        self._lock = threading.Lock()

    def seen(self, transaction_id: str) -> str | None:
        """The MES id if this transaction was applied (or found duplicate, or restored) before."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT mes_transaction_id FROM sync_log WHERE transaction_id = ? AND status IN {IN_MES}",
                (transaction_id,),
            ).fetchone()
        return row[0] if row else None

    def seen_many(self, transaction_ids: list[str]) -> dict[str, str]:
        """``seen`` for many at once: transaction_id -> MES id, for those applied before."""
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(transaction_ids), 500):
                chunk = transaction_ids[start : start + 500]
                found.update(self._conn.execute(
                    f"SELECT transaction_id, mes_transaction_id FROM sync_log WHERE status IN {IN_MES} "
                    f"AND transaction_id IN ({','.join('?' * len(chunk))})", chunk,
                ).fetchall())  # fmt: skip
        return found

    def record(self, recs: list[SyncRecord]) -> None:
        """Commit the rows now, in one transaction: the caller acks their messages only after this
        returns. A row for a transaction already there is kept (the first outcome counts)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR IGNORE INTO sync_log VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(r.transaction_id, r.mes_transaction_id, r.status, r.queue, r.published_ms, r.delivered_ms,
                  r.confirmed_ms, r.acked_ms, r.attempts, int(r.redelivered)) for r in recs],
            )  # fmt: skip

    def records(self, since_ms: int = 0) -> list[SyncRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM sync_log WHERE acked_ms >= ? ORDER BY acked_ms", (since_ms,)
            ).fetchall()
        return [SyncRecord(*row[:9], redelivered=bool(row[9])) for row in rows]

    def close(self) -> None:
        self._conn.close()


@dataclass
class WorkerStats:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    restored: int = 0  # live-MES bookings put back after go-live's copy (cutover/switch.py)
    compensated: int = 0  # late originals of movements a correction's adjustment stands for: not applied
    redelivered: int = 0  # of the applied: the MES had them from an attempt whose outcome was lost
    retried: int = 0
    parked: int = 0
    mes_calls: int = 0  # posts to the MES: one per batch, or per event the route sends alone
    by_queue: dict[str, int] = field(default_factory=dict)

    def count(self, status: str, queue: str, redelivered: bool) -> None:
        """One acked message with this sync-log status."""
        if status == "applied":
            self.applied += 1
            self.redelivered += redelivered
        elif status == "duplicate":
            self.duplicates += 1
        elif status == "restored":
            self.restored += 1
        elif status == "compensated":
            self.compensated += 1
        else:
            self.skipped += 1
        self.by_queue[queue] = self.by_queue.get(queue, 0) + 1
