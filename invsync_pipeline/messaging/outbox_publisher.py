"""The outbox's AMQP publishing machinery: the flush lock and one flush run on a pika SelectConnection.

``Outbox`` in ``outbox.py`` owns the durable SQLite store and the public API; its ``flush`` and
``relay`` take a ``FlushLock`` (a file lock, so only one process flushes a file at a time) and
hand the ``Outbox`` to a ``FlushRun``, which reads its rows in ``seq`` order, publishes them with
up to ``outbox.confirm_window`` unconfirmed at once, and deletes each row only after the broker
acked it. Nothing here is public: callers use ``Outbox`` and catch the errors from
``outbox_results.py``, which this module raises.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from pika.spec import Basic

from invsync_pipeline.contract import PUBLISHED_MS_HEADER
from invsync_pipeline.messaging.connection import connection_parameters, redact
from invsync_pipeline.messaging.outbox_results import (
    BrokerLost,
    ExchangeMissing,
    OutboxBusy,
    OutboxError,
    PublishNacked,
    UnroutableEvents,
)

if TYPE_CHECKING:  # only for annotations: outbox.py imports this module at load time
    from invsync_pipeline.messaging.outbox import Outbox

# Rows read from SQLite per query while flushing; a few windows ahead keeps the socket busy.
_READ_CHUNK = 5000
# Confirmed rows are deleted in batches: one fsync per batch, not per message. A crash between
# the ack and the delete only causes a duplicate, which consumers drop.
_DELETE_BATCH = 5000
_DELETE_EVERY_SECONDS = 0.25
# After a stop (error or time budget), how long to wait for confirms still in flight.
_CONFIRM_GRACE_SECONDS = 30.0


class FlushLock:
    """The outbox file's flush lock: one flusher at a time, or the publish order interleaves."""

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


class FlushRun:
    """One flush on a SelectConnection: pipelined publishes, deletes driven by confirms."""

    def __init__(self, outbox: Outbox, max_seconds: float | None,
                 follow: tuple[threading.Event, float] | None = None):  # fmt: skip
        self.outbox = outbox
        # follow: (stop event, poll seconds) -- keep polling for new rows instead of ending.
        self.follow = follow
        self.poll_scheduled = False
        self.db = outbox.db
        self.settings = outbox.settings
        self.exchange = outbox.exchange
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
        try:
            # The nodes in order, until one opens (a cluster: messaging/connection.py).
            for params in connection_parameters(self.settings):
                self.error, self.stopped_because = None, "empty"
                self.connection = pika.SelectConnection(
                    params, on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error, on_close_callback=self._on_closed,
                )  # fmt: skip
                self.connection.ioloop.start()
                if self.stopped_because != "broker unreachable":
                    break
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
