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
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pika
import pika.exceptions
from pika.spec import Basic

from invsync_pipeline.contract import PUBLISHED_MS_HEADER, InventoryEvent
from invsync_pipeline.messaging.connection import BrokerUnavailable, connection_parameters, redact
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
# Rows read from SQLite per query while flushing; a few windows ahead keeps the socket busy.
_READ_CHUNK = 5000
# Confirmed rows are deleted in batches: one fsync per batch, not per message. A crash between
# the ack and the delete only causes a duplicate, which consumers drop.
_DELETE_BATCH = 5000
_DELETE_EVERY_SECONDS = 0.25
# After a stop (error or time budget), how long to wait for confirms still in flight.
_CONFIRM_GRACE_SECONDS = 30.0


class OutboxError(RuntimeError):
    """The outbox refused or stopped; the message says what happened and what to do."""


class OutboxFull(OutboxError):
    """Accepting the events would exceed ``outbox.capacity_events``; none of them was accepted."""


class OutboxBusy(OutboxError):
    """Another process (or Outbox object) is flushing the same outbox file right now."""


class FlushStopped(OutboxError):
    """A flush stopped before the outbox was empty; every unconfirmed event is still buffered."""

    def __init__(self, message: str, result: FlushResult | None = None):
        super().__init__(message)
        self.result = result


class UnroutableEvents(FlushStopped):
    """The broker returned events no queue is bound for (mandatory publish)."""


class ExchangeMissing(FlushStopped):
    """The topic exchange does not exist on the broker."""


class PublishNacked(FlushStopped):
    """The broker nacked a publish (it could not take responsibility for the message)."""


class BrokerLost(BrokerUnavailable):
    """The broker was unreachable or the connection dropped during a flush; nothing was lost."""

    def __init__(self, message: str, result: FlushResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class EnqueueResult:
    accepted: int
    duplicates: tuple[str, ...]  # transaction ids already buffered (or repeated in the call): no-ops
    pending: int


@dataclass(frozen=True)
class FlushResult:
    published: int  # confirmed by the broker and removed from the outbox
    pending: int  # still buffered after this flush
    seconds: float
    stopped_because: str  # "empty", "time budget", or the error

    def summary(self) -> str:
        return (f"published {self.published} in {self.seconds:.2f} s, {self.pending} still buffered "
                f"(stopped: {self.stopped_because})")  # fmt: skip


@dataclass(frozen=True)
class PublishResult:
    enqueued: EnqueueResult
    published: int
    pending: int  # buffered locally, waiting for the broker
    broker_error: str | None = None  # why the flush did not empty the outbox, if it did not

    @property
    def duplicates(self) -> tuple[str, ...]:
        return self.enqueued.duplicates


@dataclass(frozen=True)
class OutboxStatus:
    path: str
    pending: int
    capacity: int
    oldest_enqueued_at: datetime | None
    newest_enqueued_at: datetime | None
    by_routing_key: dict[str, int] = field(default_factory=dict)


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
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        mode = _journal_mode_wal(self._db)
        if mode.lower() != "wal":
            raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put INVSYNC_HOME on a local disk")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._exchange = build_topology(settings).exchange

    # --- buffer ---------------------------------------------------------------------------
    def enqueue(self, events: Iterable[InventoryEvent]) -> EnqueueResult:
        """Buffer events durably, all or nothing; a transaction_id already buffered is a no-op."""
        now = time.time()
        batch = list(events)
        db = self._db
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
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def pending_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def status(self) -> OutboxStatus:
        oldest, newest = self._db.execute("SELECT min(enqueued_at), max(enqueued_at) FROM outbox").fetchone()
        keys = dict(self._db.execute("SELECT routing_key, count(*) FROM outbox GROUP BY routing_key ORDER BY 2 DESC"))

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
                with _FlushLock(self.path.with_name(self.path.name + ".flush-lock")):
                    run = _FlushRun(self, None, follow=(stop, poll_seconds))
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
        with _FlushLock(self.path.with_name(self.path.name + ".flush-lock")):
            run = _FlushRun(self, max_seconds)
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
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FlushLock:
    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def __enter__(self) -> None:
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the whole flush
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutboxBusy(
                f"another process is flushing {self.path.with_suffix('')} right now; a second flusher "
                "would break the publish order. Wait for it to finish, or stop it."
            ) from None

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class _FlushRun:
    """One flush on a SelectConnection: pipelined publishes, deletes driven by confirms."""

    def __init__(self, outbox: Outbox, max_seconds: float | None,
                 follow: tuple[threading.Event, float] | None = None):  # fmt: skip
        self.outbox = outbox
        # follow: (stop event, poll seconds) -- keep polling for new rows instead of ending.
        self.follow = follow
        self.poll_scheduled = False
        self.db = outbox._db
        self.settings = outbox.settings
        self.exchange = outbox._exchange
        self.window = self.settings.outbox.confirm_window
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        self.rows: deque[tuple[int, str, str, bytes, float]] = deque()
        self.last_read_seq = 0
        self.read_all = False
        # delivery tag -> (seq, transaction_id); tags in publish order for multiple-acks.
        self.unconfirmed: dict[int, tuple[int, str]] = {}
        self.tag_order: deque[int] = deque()
        self.next_tag = 1
        self.to_delete: list[int] = []
        self.last_delete = time.monotonic()
        self.returned: dict[str, str] = {}  # transaction_id -> routing key
        self.published = 0
        self.nacked = 0
        self.stopping = False
        self.closing = False
        self.stopped_because = "empty"
        self.error: OutboxError | BrokerLost | None = None
        self.connection: pika.SelectConnection | None = None
        self.channel = None

    def run(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            self.stopped_because = "time budget"
            return
        # Nothing to do must not need a broker: an empty outbox flushes even while it is down.
        if not self._read() and self.follow is None:
            return
        self.connection = pika.SelectConnection(
            connection_parameters(self.settings), on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error, on_close_callback=self._on_closed,
        )  # fmt: skip
        try:
            self.connection.ioloop.start()
        finally:
            self._delete_confirmed(force=True)

    # --- reading and publishing -----------------------------------------------------------
    def _read(self) -> bool:
        rows = self.db.execute(
            "SELECT seq, transaction_id, routing_key, body, enqueued_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.last_read_seq, _READ_CHUNK),
        ).fetchall()
        if not rows:
            # The flush ends at the end of what it found; events enqueued meanwhile go next time.
            self.read_all = True
            return False
        self.rows.extend(rows)
        self.last_read_seq = rows[-1][0]
        return True

    def _pump(self) -> None:
        publish = self.channel.basic_publish
        while not self.stopping and len(self.unconfirmed) < self.window:
            if not self.rows and (self.read_all or not self._read()):
                break
            seq, tx, key, body, enqueued_at = self.rows.popleft()
            # The AMQP timestamp has whole seconds; sync lag is measured in ms from this header.
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                         message_id=tx, timestamp=int(enqueued_at),
                                         headers={PUBLISHED_MS_HEADER: int(enqueued_at * 1000)})  # fmt: skip
            publish(self.exchange, key, body, props, mandatory=True)
            self.unconfirmed[self.next_tag] = (seq, tx)
            self.tag_order.append(self.next_tag)
            self.next_tag += 1
        if self.follow is not None and not self.stopping and not self.rows and self.read_all:
            if not self.poll_scheduled:
                self.poll_scheduled = True
                self.connection.ioloop.call_later(self.follow[1], self._poll)
            return
        if not self.unconfirmed and (self.stopping or (not self.rows and self.read_all)):
            self._close()

    def _poll(self) -> None:
        """Follow mode: look for rows enqueued since the last read, or stop when asked."""
        self.poll_scheduled = False
        if self.stopping or self.closing:
            return
        self._delete_confirmed(force=True)
        if self.follow is not None and self.follow[0].is_set():
            self._stop(None, "stopped")
            return
        self.read_all = False
        self._pump()

    def _on_confirm(self, frame) -> None:
        method = frame.method
        confirmed = self._take(method.delivery_tag, method.multiple)
        if isinstance(method, Basic.Ack):
            # A returned message is acked too (it was "handled": dropped); it must stay.
            self.to_delete.extend(seq for seq, tx in confirmed if tx not in self.returned)
        else:
            self.nacked += len(confirmed)
            first = min(confirmed)[1] if confirmed else "?"
            self._stop(PublishNacked(
                f"the broker nacked {self.nacked} publish(es) (first {first}); they stay in the outbox and "
                "the next flush sends them again. Check the broker log (disk or memory alarm, queue limits)."
            ))  # fmt: skip
        self._delete_confirmed()
        self._pump()

    def _take(self, tag: int, multiple: bool) -> list[tuple[int, str]]:
        taken = []
        if multiple:
            while self.tag_order and self.tag_order[0] <= tag:
                if (item := self.unconfirmed.pop(self.tag_order.popleft(), None)) is not None:
                    taken.append(item)
        elif (item := self.unconfirmed.pop(tag, None)) is not None:
            taken.append(item)
            # Single acks can come out of order; drop tags already confirmed from the front.
            while self.tag_order and self.tag_order[0] not in self.unconfirmed:
                self.tag_order.popleft()
        return taken

    def _on_return(self, _channel, method, properties, _body) -> None:
        # The broker sends basic.return before the basic.ack of the same message, so the ack
        # handler sees it here and keeps the row.
        self.returned[properties.message_id] = method.routing_key
        if not self.stopping:
            self._stop(None)

    def _delete_confirmed(self, force: bool = False) -> None:
        if not self.to_delete:
            return
        if (
            not force
            and len(self.to_delete) < _DELETE_BATCH
            and time.monotonic() - self.last_delete < _DELETE_EVERY_SECONDS
        ):
            return
        batch, self.to_delete = self.to_delete, []
        self.db.execute("BEGIN")
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", ((s,) for s in batch))
        self.db.execute("COMMIT")
        self.published += len(batch)
        self.last_delete = time.monotonic()

    # --- stopping -------------------------------------------------------------------------
    def _stop(self, error: OutboxError | BrokerLost | None, reason: str | None = None) -> None:
        """Publish no more; wait (bounded) for the confirms in flight, then close."""
        if error is not None and self.error is None:
            self.error = error
            self.stopped_because = str(error)
        elif reason and not self.stopping:
            self.stopped_because = reason
        if not self.stopping:
            self.stopping = True
            self.connection.ioloop.call_later(_CONFIRM_GRACE_SECONDS, self._confirms_timed_out)
        if not self.unconfirmed:
            self._close()

    def _confirms_timed_out(self) -> None:
        if not self.closing:
            waited = f"{_CONFIRM_GRACE_SECONDS:.0f} s"
            self._stop(
                BrokerLost(
                    f"no confirm from {redact(self.settings.amqp_url)} within {waited}; "
                    f"{len(self.unconfirmed)} unconfirmed publishes stay buffered"
                )
            )
            self._close()

    def _close(self) -> None:
        if self.returned and not isinstance(self.error, UnroutableEvents):
            keys = sorted(set(self.returned.values()))
            self.error = UnroutableEvents(
                f"the broker returned {len(self.returned)} event(s) as unroutable: no queue is bound on exchange "
                f"{self.exchange!r} for routing key(s) {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}. "
                "They stay in the outbox. Run `invsync topology apply` (check the namespace and the plants "
                "in the config), then `invsync outbox flush`."
            )
            self.stopped_because = str(self.error)
        self.stopping = True
        if not self.closing:
            self.closing = True
            if self.connection.is_open:
                self.connection.close()
            elif self.connection.is_closed:
                self.connection.ioloop.stop()

    # --- connection callbacks -------------------------------------------------------------
    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        if self.max_seconds is not None:
            remaining = self.max_seconds - (time.monotonic() - self.started)
            self.connection.ioloop.call_later(max(remaining, 0), lambda: self._stop(None, "time budget"))
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._pump())

    def _on_channel_closed(self, _channel, reason: Exception) -> None:
        # A dropped connection closes the channel too; _on_closed reports that one.
        if self.closing or self.connection.is_closing or self.connection.is_closed:
            return
        code = getattr(reason, "reply_code", None)
        if code == 404:
            error: OutboxError | BrokerLost = ExchangeMissing(
                f"exchange {self.exchange!r} does not exist on {redact(self.settings.amqp_url)}; "
                f"{self.outbox.pending_count()} events stay in the outbox. Run `invsync topology apply` "
                "(with the same INVSYNC_NAMESPACE), then `invsync outbox flush`."
            )
        else:
            error = BrokerLost(f"the broker closed the publishing channel ({reason}); unconfirmed events stay buffered")
        if self.error is None:
            self.error, self.stopped_because = error, str(error)
        self._close()

    def _on_open_error(self, _connection, exc: Exception) -> None:
        self.error = BrokerLost(
            f"cannot reach RabbitMQ at {redact(self.settings.amqp_url)} ({exc!r}); all "
            f"{self.outbox.pending_count()} events stay buffered in {self.outbox.path}. Start the broker or point "
            "INVSYNC_AMQP_URL at it, then `invsync outbox flush`."
        )
        self.stopped_because = "broker unreachable"
        self.connection.ioloop.stop()

    def _on_closed(self, _connection, reason: Exception) -> None:
        if not self.closing and self.error is None:
            self.error = BrokerLost(
                f"lost the connection to {redact(self.settings.amqp_url)} during a flush ({reason!r}); "
                f"{len(self.unconfirmed)} publishes were unconfirmed and stay buffered with the rest."
            )
            self.stopped_because = "connection lost"
        self.connection.ioloop.stop()
