"""The ERP-side outbox: events wait in a local SQLite file until the broker has confirmed them.

``enqueue`` makes events durable locally (WAL, ``synchronous=FULL``: once it returns, a crash
or power cut does not lose them). ``flush`` publishes them in ``seq`` order on one channel with
publisher confirms, keeping up to ``outbox.confirm_window`` publishes in flight, and deletes a
row only after the broker acked it. Anything not confirmed (nack, lost connection, returned as
unroutable, time budget spent) stays and is sent again, oldest first, by the next flush; the
duplicates a lost confirm can cause are harmless because every consumer de-duplicates by
transaction_id.

An ``Outbox`` object belongs to one thread. Several processes may enqueue into the same file;
only one flushes at a time (a file lock), because two flushers would interleave the order.

This module holds the store and the public API. The publishing machinery (the flush lock and
the SelectConnection run) is in ``outbox_publisher.py``; the results and errors are defined in
``outbox_results.py`` and re-exported from here, so callers import everything from this module.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.messaging.outbox_publisher import FlushLock, FlushRun
from invsync_pipeline.messaging.outbox_results import (
    BrokerLost,
    EnqueueResult,
    ExchangeMissing,
    FlushResult,
    FlushStopped,
    OutboxBusy,
    OutboxError,
    OutboxFull,
    OutboxStatus,
    PublishNacked,
    PublishResult,
    UnroutableEvents,
)
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    -- AUTOINCREMENT: a seq is never reused after its row is deleted, so seq order is enqueue order.
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT    NOT NULL UNIQUE,
    routing_key    TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    enqueued_at    REAL    NOT NULL  -- unix seconds; published as the AMQP timestamp
)
"""


def _journal_mode_wal(db: sqlite3.Connection, attempts: int = 50) -> str:
    """Switch to WAL. Two processes opening a new file at once can both try; the loser gets
    SQLITE_BUSY at once (the busy timeout does not cover this pragma), so try again."""
    for attempt in range(attempts):
        try:
            return db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


class Outbox:
    """A durable local buffer in front of the topic exchange (see the module docstring)."""

    def __init__(self, settings: Settings, path: Path | None = None):
        self.settings = settings
        # Each publishing system has its own outbox file (the ERP's by default; the MES its own).
        self.path = Path(path) if path is not None else settings.outbox_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
        # the statements we mean (enqueue is all-or-nothing).
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        mode = _journal_mode_wal(self.db)
        if mode.lower() != "wal":
            raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put INVSYNC_HOME on a local disk")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(_SCHEMA)
        self.exchange = build_topology(settings).exchange

    # --- buffer ---------------------------------------------------------------------------
    def enqueue(self, events: Iterable[InventoryEvent]) -> EnqueueResult:
        """Buffer events durably, all or nothing; a transaction_id already buffered is a no-op."""
        now = time.time()
        batch = list(events)
        db = self.db
        # IMMEDIATE takes the write lock now, so the duplicate and capacity checks below hold
        # until COMMIT even with other processes enqueueing into the same file.
        db.execute("BEGIN IMMEDIATE")
        try:
            buffered = self._existing_ids([e.transaction_id for e in batch])
            seen: set[str] = set()
            rows, duplicates = [], []
            for event in batch:
                tx = event.transaction_id
                if tx in buffered or tx in seen:
                    duplicates.append(tx)
                    continue
                seen.add(tx)
                rows.append((tx, event.routing_key, event.to_body(), now))
            pending = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            capacity = self.settings.outbox.capacity_events
            if pending + len(rows) > capacity:
                raise OutboxFull(
                    f"outbox {self.path} is full: {pending:,} events buffered, capacity {capacity:,}, "
                    f"this call brings {len(rows):,} new ones. Nothing of this call was accepted. Get "
                    f"the broker back so the outbox drains (`invsync outbox flush`), or raise "
                    f"outbox.capacity_events in the config."
                )
            db.executemany(
                "INSERT INTO outbox (transaction_id, routing_key, body, enqueued_at) VALUES (?, ?, ?, ?)", rows
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if duplicates:
            log.info("outbox: %d events already buffered, ignored (first %s)", len(duplicates), duplicates[0])
        return EnqueueResult(accepted=len(rows), duplicates=tuple(duplicates), pending=pending + len(rows))

    def _existing_ids(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        # Chunks stay below SQLite's bound-parameter limit (999 on old builds).
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT transaction_id FROM outbox WHERE transaction_id IN ({marks})"
            found.update(row[0] for row in self.db.execute(query, chunk))
        return found

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def status(self) -> OutboxStatus:
        oldest, newest = self.db.execute("SELECT min(enqueued_at), max(enqueued_at) FROM outbox").fetchone()
        keys = dict(self.db.execute("SELECT routing_key, count(*) FROM outbox GROUP BY routing_key ORDER BY 2 DESC"))

        def as_dt(ts: float | None) -> datetime | None:
            return datetime.fromtimestamp(ts, UTC) if ts is not None else None

        return OutboxStatus(str(self.path), sum(keys.values()), self.settings.outbox.capacity_events,
                            as_dt(oldest), as_dt(newest), keys)  # fmt: skip

    # --- publish --------------------------------------------------------------------------
    def relay(self, stop: threading.Event, *, poll_seconds: float = 0.02, max_backoff: float = 30.0) -> FlushResult:
        """Publish continuously: keep one connection open and pick up new events every
        ``poll_seconds`` until ``stop`` is set. Broker outages are retried with backoff; the
        events wait in the outbox meanwhile. This is how the outbox runs beside a live ERP."""
        started = time.monotonic()
        published, backoff = 0, 0.5
        while not stop.is_set():
            try:
                with FlushLock(self.path.with_name(self.path.name + ".flush-lock")):
                    run = FlushRun(self, None, follow=(stop, poll_seconds))
                    run.run()
                published += run.published
                if run.error is not None:
                    raise run.error
                backoff = 0.5
            except (BrokerLost, PublishNacked, OutboxBusy) as exc:
                log.warning("outbox relay: %s; retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
        return FlushResult(published, self.pending_count(), time.monotonic() - started, "stopped")

    def flush(self, max_seconds: float | None = None) -> FlushResult:
        """Publish buffered events in order until the outbox is empty or the time budget is spent.

        Raises BrokerLost (a BrokerUnavailable) when the broker cannot be reached or the
        connection drops, UnroutableEvents / ExchangeMissing when the topology is not in place,
        PublishNacked on a nack, OutboxBusy when another flush holds the lock. In every case
        the events not confirmed are still buffered.
        """
        with FlushLock(self.path.with_name(self.path.name + ".flush-lock")):
            run = FlushRun(self, max_seconds)
            run.run()
        result = FlushResult(run.published, self.pending_count(), time.monotonic() - run.started,
                             run.stopped_because)  # fmt: skip
        if run.error is not None:
            run.error.result = result
            raise run.error
        return result

    def publish(self, events: Iterable[InventoryEvent], max_seconds: float | None = None) -> PublishResult:
        """Enqueue, then try to flush. A broker that is down leaves the events buffered, not lost."""
        enqueued = self.enqueue(events)
        try:
            flushed = self.flush(max_seconds)
        except (BrokerLost, PublishNacked, OutboxBusy) as exc:
            result = getattr(exc, "result", None)
            return PublishResult(enqueued, result.published if result else 0, self.pending_count(), str(exc))
        return PublishResult(enqueued, flushed.published, flushed.pending)

    def flush_until_empty(
        self,
        timeout: float | None = None,
        *,
        max_backoff: float = 30.0,
        on_retry: Callable[[Exception, float], None] | None = None,
    ) -> FlushResult:
        """Flush, reconnecting with exponential backoff, until the outbox is empty or timeout.

        Broker outages, nacks and a busy lock are retried; unroutable events and a missing
        exchange are raised at once, because only a person (``invsync topology apply``) fixes them.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        published, backoff, last_error = 0, 0.5, "empty"
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                result = self.flush(remaining)
                published += result.published
                backoff, last_error = 0.5, result.stopped_because
                if result.pending == 0:
                    break
            except (BrokerLost, PublishNacked, OutboxBusy) as exc:
                published += exc.result.published if getattr(exc, "result", None) else 0
                last_error = str(exc)
                wait = backoff if remaining is None else min(backoff, max(remaining, 0))
                if on_retry:
                    on_retry(exc, wait)
                else:
                    log.warning("outbox flush failed, retrying in %.1f s: %s", wait, exc)
                time.sleep(wait)
                backoff = min(backoff * 2, max_backoff)
        pending = self.pending_count()
        reason = "empty" if pending == 0 else f"timeout after {timeout} s; last: {last_error}"
        return FlushResult(published, pending, time.monotonic() - started, reason)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BrokerLost", "EnqueueResult", "ExchangeMissing", "FlushResult", "FlushStopped", "Outbox", "OutboxBusy",
    "OutboxError", "OutboxFull", "OutboxStatus", "PublishNacked", "PublishResult", "UnroutableEvents",
]  # fmt: skip
