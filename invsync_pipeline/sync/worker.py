"""The real-time MES sync worker: plant queue -> validate -> POST to the MES -> confirmed -> ack.

Threads: the pika connection lives on one thread (the I/O thread) and is only touched there;
MES calls run in a small thread pool, so a slow MES never starves heartbeats. A finished call
hands its outcome back with ``add_callback_threadsafe`` and the I/O thread acks.

Failures: an MES that is down or answers 5xx sends the message to the next retry tier (1, 5,
15 minutes), then to parking with the reason. A message the contract or the MES rejects goes
straight to parking with the reason. The copy is confirmed by the broker before the original
is acked, so nothing is lost. Adjustments and cycle counts are consumed only inside the
configured low-activity windows. SIGTERM stops consuming, finishes in-flight calls, acks, and
closes; messages not yet started go back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pika
import pika.exceptions

from invsync_pipeline.contract import (
    PUBLISHED_MS_HEADER,
    ContractLimits,
    ContractViolation,
    InventoryEvent,
    parse_event,
)
from invsync_pipeline.cutover.scope import in_scope
from invsync_pipeline.cutover.state import CutoverState, Switch
from invsync_pipeline.cutover.switch import mes_client_for, restore_overwritten
from invsync_pipeline.messaging.amqp_headers import why_not_republishable
from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.retry import RETRIES_HEADER, publish_failure, retries_so_far
from invsync_pipeline.messaging.topology import apply_topology
from invsync_pipeline.ops.compensations import compensated_by
from invsync_pipeline.ops.compensations import registry as compensation_registry
from invsync_pipeline.settings import NON_CRITICAL_TRANSACTION_TYPES, Settings
from invsync_pipeline.sources.mes import MesAuthError, MesClient, MesError, MesRejected, MesUnavailable, PostResult
from invsync_pipeline.sync.sync_log import SyncLog, SyncRecord

log = logging.getLogger("invsync.sync")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def plant_queues(settings: Settings) -> tuple[list[str], list[str]]:
    """(critical queues, non-critical queues) of every configured plant, with namespace."""
    critical, noncritical = [], []
    for plant in settings.topology.plants:
        for pq in plant.queues:
            name = settings.name(f"plant.{plant.warehouse.lower()}.{pq.name}")
            if set(pq.transaction_types) <= set(NON_CRITICAL_TRANSACTION_TYPES):
                noncritical.append(name)
            else:
                critical.append(name)
    return critical, noncritical


def in_window(windows: tuple[str, ...], now: datetime) -> bool:
    """True when no windows are configured or ``now`` (UTC) falls in one ("HH:MM-HH:MM")."""
    if not windows:
        return True
    minute = now.hour * 60 + now.minute
    for window in windows:
        start_s, end_s = window.split("-")
        start = int(start_s[:2]) * 60 + int(start_s[3:5])
        end = int(end_s[:2]) * 60 + int(end_s[3:5])
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return False


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
    by_queue: dict[str, int] = field(default_factory=dict)


@dataclass
class _Job:
    queue: str
    tag: int
    properties: pika.BasicProperties
    body: bytes
    event: InventoryEvent
    delivered_ms: int
    target: MesClient
    earlier: MesClient | None = None  # the pre-switch target, for events older than the last switch
    future: Future | None = None
    restore_after: Switch | None = None  # a live-MES booking older than this go-live: see restore_overwritten
    redelivered: bool = False  # the broker delivered it before (a crash, a lost ack)


class SyncWorker:
    """Consumes the plant queues and applies each event to the MES exactly once."""

    def __init__(
        self, settings: Settings, mes: MesClient, *, queues: list[str] | None = None, shadow: MesClient | None = None
    ):
        self.settings = settings
        self.mes = mes
        # Cutover: in shadow mode events go to the shadow MES; a switch pauses the worker (cutover/).
        self.targets = {"live": mes, "shadow": shadow or mes_client_for(settings, "shadow")}
        self.cutover = CutoverState(settings)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._mode = self.cutover.current()
        self._paused_for: int | None = None
        critical, noncritical = plant_queues(settings)
        wanted = set(queues) if queues is not None else None
        self.critical = [q for q in critical if wanted is None or q in wanted]
        self.noncritical = [q for q in noncritical if wanted is None or q in wanted]
        self.sync_log = SyncLog(settings.home / "sync.sqlite")
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._inflight: dict[int, _Job] = {}
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._pool = ThreadPoolExecutor(max_workers=settings.sync.mes_concurrency, thread_name_prefix="mes")
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._topology = None
        self._compensations: sqlite3.Connection | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to finish in-flight work and return from ``run`` (thread-safe)."""
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.is_open:
            # Wake the I/O loop; the connection may be closing already.
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, max_seconds: float | None = None) -> WorkerStats:
        """Consume until stopped (or for ``max_seconds``); reconnects on connection errors only."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    self._connect()
                    backoff = 1.0
                    self._loop(deadline)
                    break
                except (pika.exceptions.AMQPConnectionError, BrokerUnavailable) as exc:
                    log.warning("broker connection lost (%s); reconnecting in %.0f s", exc, backoff)
                    self._drop_connection()
                    if self._stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, 30.0)
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _connect(self) -> None:
        self._conn = connect(self.settings, heartbeat=self.settings.sync.heartbeat_seconds)
        # Declaring again after every reconnect, as pika's examples do: a broker restarted
        # without its definitions gets them back.
        self._topology = apply_topology(self.settings, self._conn)
        self._channel = self._conn.channel()
        self._channel.confirm_delivery()  # failure copies are confirmed before the original is acked
        self._channel.basic_qos(prefetch_count=self.settings.sync.prefetch)
        self._consumers.clear()
        self._inflight.clear()
        if self._paused_for is None:  # paused for a cutover switch: consume again once it is done
            for queue in self.critical:
                self._consume(queue)

    def _consume(self, queue: str) -> None:
        self._consumers[queue] = self._channel.basic_consume(
            queue, on_message_callback=partial(self._on_message, queue)
        )

    def _loop(self, deadline: float | None) -> None:
        next_window_check = next_cutover_check = 0.0
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            now = time.monotonic()
            if now >= next_cutover_check:
                if self._follow_cutover():
                    next_window_check = 0.0  # resumed: the window decides about non-critical queues again
                next_cutover_check = now + 0.25
            if now >= next_window_check and self._paused_for is None:
                self._toggle_noncritical(in_window(self.settings.sync.noncritical_windows, datetime.now(UTC)))
                next_window_check = now + 15
            self._conn.process_data_events(time_limit=0.2)
            if self._fatal is not None:
                self._stop.set()
        self._finish_inflight()

    def _follow_cutover(self) -> bool:
        """Pause for a switch under way, resume once it is done; True when it just resumed."""
        mode = self.cutover.current()
        resumed = False
        if mode.switching is not None and self._paused_for != mode.switching.seq:
            log.info("cutover switch %d (%s -> %s): pausing", mode.switching.seq, mode.switching.from_mode,
                     mode.switching.to_mode)  # fmt: skip
            self._finish_inflight()
            self._paused_for = mode.switching.seq
        elif mode.switching is None and self._paused_for is not None:
            log.info("cutover: resuming; the event-driven path is %s", mode.mode)
            self._paused_for = None
            for queue in self.critical:
                self._consume(queue)
            resumed = True
        self._mode = mode
        self.cutover.heartbeat(self.worker_id, self._paused_for)
        return resumed

    def _toggle_noncritical(self, open_now: bool) -> None:
        for queue in self.noncritical:
            if open_now and queue not in self._consumers:
                log.info("low-activity window open: consuming %s", queue)
                self._consume(queue)
            elif not open_now and queue in self._consumers:
                log.info("low-activity window closed: pausing %s", queue)
                self._channel.basic_cancel(self._consumers.pop(queue))

    def _finish_inflight(self) -> None:
        """Stop taking messages; requeue those not started; wait for, and ack, the rest."""
        for tag in list(self._consumers.values()):
            self._channel.basic_cancel(tag)
        self._consumers.clear()
        for job in list(self._inflight.values()):
            if job.future is not None and job.future.cancel():
                self._channel.basic_nack(job.tag, requeue=True)
                self._inflight.pop(job.tag, None)
        while self._inflight:
            self._conn.process_data_events(time_limit=0.1)

    def _drop_connection(self) -> None:
        # Closing a broken connection may fail again; it is being dropped anyway.
        with contextlib.suppress(Exception):
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        self._conn = None
        self._channel = None
        self._inflight.clear()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._drop_connection()
        self.sync_log.close()
        if self._compensations is not None:
            self._compensations.close()
        # A stopped worker need not pause for a switch.
        with contextlib.suppress(Exception):
            self.cutover.leave(self.worker_id)
        self.cutover.close()
        self.targets["shadow"].close()

    # --- per message (I/O thread) ---------------------------------------------------------------
    def _on_message(self, queue: str, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        """One delivery. Whatever goes wrong with it is that message's fault alone: it is parked
        whole with the reason, and the worker goes on with the next one (invariant 3)."""
        try:
            self._handle_message(queue, channel, method, _usable_published_ms(properties), body)
        except _NOT_THE_MESSAGES_FAULT:
            raise  # the run loop reconnects (or stops) and the broker delivers the message again
        except Exception as exc:  # noqa: BLE001 - one message never stops the worker
            log.exception("unexpected error on message_id=%r from %s; parking it", properties.message_id, queue)
            job = self._inflight.pop(method.delivery_tag, None)
            if job is not None and job.future is not None:
                job.future.cancel()  # if the call already runs, its outcome finds no job and is dropped
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
            try:
                self._fail(queue, method.delivery_tag, properties, body, reason, retryable=False)
            except _NOT_THE_MESSAGES_FAULT:
                raise
            except Exception:  # noqa: BLE001 - not even parking worked: the broker dead-letters it
                log.exception("could not park message_id=%r; rejecting it to parking", properties.message_id)
                channel.basic_nack(method.delivery_tag, requeue=False)

    def _handle_message(
        self, queue: str, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        delivered_ms = _now_ms()
        try:
            event = parse_event(body, limits=ContractLimits.from_settings(self.settings))
        except ContractViolation as violation:
            self._fail(queue, method.delivery_tag, properties, body, f"invalid: {violation}", retryable=False)
            return
        if self._paused_for is not None:
            # Delivered just before the pause: back to the queue, applied after the switch.
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        mode = self._mode.mode
        if (go_live := self._go_live_overwrote(event)) is not None and self.sync_log.seen(event.transaction_id) is None:
            # Booked in the live MES before go-live and maybe overwritten by its copy: the pool
            # thread looks and puts back what the copy took (cutover/switch.py).
            job = _Job(queue, method.delivery_tag, properties, body, event, delivered_ms, self.targets["live"],
                       self.targets["shadow"], restore_after=go_live)  # fmt: skip
            self._inflight[job.tag] = job
            job.future = self._pool.submit(self._call_mes, job, self._conn)
            return
        if (
            (event.source_system == "MES" and mode == "live")
            or (event.source_system == "RECON" and event.target_system == "ERP")
            or not in_scope(self.settings, event.material_type, event.timestamp)
        ):
            # Already in the live MES (it originated there; the shadow MES still needs it), a
            # correction meant for the ERP, or a material type outside the cutover's pilot scope.
            self._ack(queue, method.delivery_tag, properties, event, None, "skipped", delivered_ms, delivered_ms)
            return
        redelivered = bool(getattr(method, "redelivered", False))
        if (mes_id := self.sync_log.seen(event.transaction_id)) is not None:
            self._ack(queue, method.delivery_tag, properties, event, mes_id, "duplicate", delivered_ms, delivered_ms,
                      redelivered=redelivered)  # fmt: skip
            return
        if (correction := self._compensated_by(event.transaction_id)) is not None:
            # A correction stands for this movement by an adjustment: applying the late original
            # as well would count it twice (ops/compensations.py).
            log.info("compensated tx=%s by %s: not applied", event.transaction_id, correction)
            self._ack(queue, method.delivery_tag, properties, event, None, "compensated", delivered_ms, delivered_ms,
                      redelivered=redelivered)  # fmt: skip
            return
        job = _Job(queue, method.delivery_tag, properties, body, event, delivered_ms, self.targets[mode],
                   self._before_switch_target(event), redelivered=redelivered)  # fmt: skip
        self._inflight[job.tag] = job
        job.future = self._pool.submit(self._call_mes, job, self._conn)

    def _compensated_by(self, transaction_id: str) -> str | None:
        if self._compensations is None:  # opened on the I/O thread, which alone uses it
            self._compensations = compensation_registry(self.settings)
        return compensated_by(self._compensations, transaction_id, "MES")

    def _go_live_overwrote(self, event: InventoryEvent) -> Switch | None:
        """The go-live whose copy may have overwritten this live-MES booking, if any."""
        last = self._mode.last
        if (
            event.source_system != "MES"
            or self._mode.mode != "live"
            or last is None
            or last.from_mode != "shadow"
            or last.completed_at is None
            or event.timestamp >= last.completed_at
            or not in_scope(self.settings, event.material_type, last.completed_at)
        ):
            return None
        return last

    def _before_switch_target(self, event: InventoryEvent) -> MesClient | None:
        """The MES the path wrote before the last switch, for an event older than that switch."""
        last = self._mode.last
        if last is None or last.completed_at is None or event.timestamp >= last.completed_at:
            return None
        return self.targets[last.from_mode]

    def _call_mes(self, job: _Job, conn: pika.BlockingConnection) -> None:
        """Pool thread: the MES call. Never touches the channel; hands the outcome back."""
        try:
            outcome: Any
            if job.restore_after is not None and job.earlier is not None:
                with CutoverState(self.settings) as state:
                    since = state.last_copy_into("shadow", before=job.restore_after.requested_at)
                outcome = restore_overwritten(job.restore_after, job.event, job.target, job.earlier, since)
            elif (
                job.earlier is not None
                and (earlier := job.earlier.find_transaction(job.event.transaction_id)) is not None
            ):
                # Applied before the switch (its ack was lost then); the switch's copy carried it over.
                outcome = PostResult(earlier["mes_transaction_id"], "duplicate", job.event.transaction_id)
            else:
                outcome = _post_or_find(job.target, job.event)
        except (MesUnavailable, MesRejected, MesAuthError) as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - an unexpected client error is retried, not lost
            outcome = MesUnavailable(f"unexpected error calling the MES: {exc!r}")
        confirmed_ms = _now_ms()
        try:
            conn.add_callback_threadsafe(partial(self._on_mes_outcome, job, outcome, confirmed_ms))
        except Exception:  # noqa: BLE001 - connection gone: the broker redelivers, the MES dedupes
            log.warning("connection closed before %s could be acked; it will be redelivered", job.event.transaction_id)

    def _on_mes_outcome(self, job: _Job, outcome: Any, confirmed_ms: int) -> None:
        if self._inflight.pop(job.tag, None) is None or self._channel is None:
            return  # from an earlier connection; its message was redelivered
        tx = job.event.transaction_id
        if isinstance(outcome, MesAuthError):
            # Every message would fail the same way: stop, keep the message, say what to fix.
            self._channel.basic_nack(job.tag, requeue=True)
            self._fatal = outcome
            return
        if isinstance(outcome, MesRejected):
            self._fail(job.queue, job.tag, job.properties, job.body, f"rejected by MES: {outcome}", retryable=False)
            return
        if isinstance(outcome, MesUnavailable):
            self._fail(job.queue, job.tag, job.properties, job.body, f"MES unavailable: {outcome}", retryable=True)
            return
        status, redelivered = outcome.status, job.redelivered
        again = job.redelivered or retries_so_far(job.properties) > 0
        if status == "duplicate" and again and self.sync_log.seen(tx) is None:
            # Delivered again (after a crash, or from a retry tier), and the MES already has it
            # though our log does not: an earlier attempt of ours applied it and its outcome was
            # lost. It counts once, as applied. A fresh copy (the same id published twice) stays
            # a duplicate.
            status, redelivered = "applied", True
        self._ack(job.queue, job.tag, job.properties, job.event, outcome.mes_transaction_id, status,
                  job.delivered_ms, confirmed_ms, redelivered=redelivered)  # fmt: skip
        log.info("%s tx=%s mes_tx=%s queue=%s", outcome.status, tx, outcome.mes_transaction_id, job.queue)

    def _ack(self, queue: str, tag: int, properties: pika.BasicProperties, event: InventoryEvent,
             mes_id: str | None, status: str, delivered_ms: int, confirmed_ms: int,
             *, redelivered: bool = False) -> None:  # fmt: skip
        """Log the outcome durably, then ack: a worker killed in between gets the message again,
        and its row says what happened (a row is never lost for a message acked)."""
        acked_ms = _now_ms()
        headers = properties.headers or {}
        published = headers.get(PUBLISHED_MS_HEADER)
        if published is None and properties.timestamp:
            published = int(properties.timestamp) * 1000
        self.sync_log.record(
            SyncRecord(
                event.transaction_id,
                mes_id,
                status,
                queue,
                int(published) if published is not None else None,
                delivered_ms,
                confirmed_ms,
                acked_ms,
                retries_so_far(properties) + 1,
                redelivered,
            )  # fmt: skip
        )
        self._channel.basic_ack(tag)
        if status == "applied":
            self.stats.applied += 1
            self.stats.redelivered += redelivered
        elif status == "duplicate":
            self.stats.duplicates += 1
        elif status == "restored":
            self.stats.restored += 1
        elif status == "compensated":
            self.stats.compensated += 1
        else:
            self.stats.skipped += 1
        self.stats.by_queue[queue] = self.stats.by_queue.get(queue, 0) + 1

    def _fail(self, queue: str, tag: int, properties: pika.BasicProperties, body: bytes, reason: str,
              *, retryable: bool) -> None:  # fmt: skip
        route = None
        dropped = why_not_republishable(properties.headers)
        if dropped is None:
            try:
                route = publish_failure(self._channel, self._topology, queue, properties, body, reason,
                                        retryable=retryable)  # fmt: skip
            except _NOT_THE_MESSAGES_FAULT:
                raise
            except Exception as exc:  # noqa: BLE001 - the sender's headers, not the message, failed to publish
                dropped = f"{type(exc).__name__}: {exc}"[:300]
        if route is None:
            # Headers that cannot travel on (a type pika cannot encode again, a table too big for
            # a frame once the reason is added): the body goes on whole with our headers only.
            log.warning("message_id=%r from %s: sending it on without the sender's headers (%s)",
                        properties.message_id, queue, dropped)  # fmt: skip
            minimal = pika.BasicProperties(
                message_id=properties.message_id if isinstance(properties.message_id, str) else None,
                headers={RETRIES_HEADER: retries_so_far(properties)},
            )
            route = publish_failure(self._channel, self._topology, queue, minimal, body,
                                    f"{reason} (the sender's headers were dropped: {dropped})",
                                    retryable=retryable)  # fmt: skip
        self._channel.basic_ack(tag)
        if route.destination == "parking":
            self.stats.parked += 1
            log.error("parked message_id=%s from %s: %s", properties.message_id, queue, reason)
        else:
            self.stats.retried += 1
            log.warning("to %s message_id=%s from %s: %s", route.destination, properties.message_id, queue, reason)


# Errors of the connection or of our own storage (the sync log): not one message's fault. They
# leave the message unacked, and the broker delivers it again once the worker is back.
_NOT_THE_MESSAGES_FAULT = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ChannelClosed,
    BrokerUnavailable,
    sqlite3.Error,
)


def _usable_published_ms(properties: pika.BasicProperties) -> pika.BasicProperties:
    """The properties with the sender's publish-time header dropped when it is not a sane
    millisecond count: it only measures lag, and the sync log must be able to record it."""
    headers = properties.headers
    if not headers or PUBLISHED_MS_HEADER not in headers:
        return properties
    value = headers[PUBLISHED_MS_HEADER]
    try:
        usable = not isinstance(value, bool) and 0 <= int(value) < 2**63
    except (TypeError, ValueError, OverflowError):
        usable = False
    if usable:
        return properties
    kept = {k: v for k, v in headers.items() if k != PUBLISHED_MS_HEADER}
    return pika.BasicProperties(
        content_type=properties.content_type, delivery_mode=properties.delivery_mode,
        message_id=properties.message_id, timestamp=properties.timestamp, headers=kept,
    )  # fmt: skip


def _post_or_find(mes: MesClient, event: InventoryEvent) -> PostResult:
    """Post the event. If the MES did not answer (a timeout, a dropped connection), it may have
    applied it all the same: look it up before it goes to a retry tier or parking, so an applied
    movement is neither retried for nothing nor parked as "MES unavailable"."""
    try:
        return mes.post_transaction(event)
    except MesUnavailable as unanswered:
        try:
            found = mes.find_transaction(event.transaction_id)
        except MesError:
            raise unanswered from None  # it cannot be asked either: retry later
        if found is None or found.get("status") not in ("applied", "not_applicable"):
            raise
        log.info("tx=%s: the MES did not answer the post but has applied it (%s)", event.transaction_id, unanswered)
        return PostResult(found["mes_transaction_id"], "applied", event.transaction_id)
