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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pika
import pika.exceptions

from invsync_pipeline.contract import ContractLimits, ContractViolation, InventoryEvent, parse_event
from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.retry import CONNECTION_ERRORS, retries_so_far, send_on
from invsync_pipeline.messaging.topology import apply_topology
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import MesApi, MesAuthError, MesClient, MesRejected, MesUnavailable, PostResult
from invsync_pipeline.sync.batches import Batcher
from invsync_pipeline.sync.queues import in_window, plant_queues
from invsync_pipeline.sync.route import LiveRoute
from invsync_pipeline.sync.screen import Screen
from invsync_pipeline.sync.sync_log import SyncLog, SyncRecord, WorkerStats, published_ms_of

log = logging.getLogger("invsync.sync")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Job:
    queue: str
    tag: int
    properties: pika.BasicProperties
    body: bytes
    event: InventoryEvent
    delivered_ms: int
    apply: Callable[[], PostResult] | None  # a call of its own the route chose (None: in a batch)
    future: Future | None = None
    redelivered: bool = False  # the broker delivered it before (a crash, a lost ack)


class SyncWorker:
    """Consumes the plant queues and applies each event to the MES exactly once."""

    def __init__(
        self,
        settings: Settings,
        mes: MesApi,
        *,
        queues: list[str] | None = None,
        shadow: MesApi | None = None,
        route: LiveRoute | None = None,
    ):
        self.settings = settings
        self.mes = mes
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Where each event goes (sync/route.py). By default the cutover's route: in shadow mode
        # events go to the shadow MES, and a switch pauses the worker (cutover/routing.py).
        self.route = route or _cutover_route(settings, mes, shadow, self.worker_id)
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
        self._screen = Screen(settings, self.sync_log)
        self._batcher = Batcher(self._pool, settings.sync.batch_max_events, settings.sync.batch_window_ms,
                                self._screen, self._on_batch_outcomes, self.stats)  # fmt: skip
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._topology = None
        self._limits = ContractLimits.from_settings(settings)

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
        self._batcher.clear()
        if not self.route.paused:  # paused for a cutover switch: consume again once it is done
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
                change = self.route.follow()
                if change == "pause":
                    self._finish_inflight()
                    self.route.paused_cleanly()
                elif change == "resume":
                    for queue in self.critical:
                        self._consume(queue)
                    next_window_check = 0.0  # the window decides about non-critical queues again
                next_cutover_check = now + 0.25
            if now >= next_window_check and not self.route.paused:
                self._toggle_noncritical(in_window(self.settings.sync.noncritical_windows, datetime.now(UTC)))
                next_window_check = now + 15
            self._conn.process_data_events(time_limit=0.2)
            if self._fatal is not None:
                self._stop.set()
        self._finish_inflight()

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
        self._batcher.flush(self._conn)
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
        self._batcher.clear()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._drop_connection()
        self.sync_log.close()
        self._screen.close()
        with contextlib.suppress(Exception):
            self.route.leave()

    # --- per message (I/O thread) ---------------------------------------------------------------
    def _on_message(self, queue: str, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        """One delivery. Whatever goes wrong with it is that message's fault alone: it is parked
        whole with the reason, and the worker goes on with the next one (invariant 3)."""
        try:
            self._handle_message(queue, channel, method, properties, body)
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
            event = parse_event(body, limits=self._limits)
        except ContractViolation as violation:
            self._fail(queue, method.delivery_tag, properties, body, f"invalid: {violation}", retryable=False)
            return
        if self.route.paused:
            # Delivered just before the pause: back to the queue, applied after the switch.
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        redelivered = bool(getattr(method, "redelivered", False))
        delivery = self.route.deliver(event)
        if delivery.apply is None and delivery.batch_to is None:
            log.debug("skipped tx=%s: %s", event.transaction_id, delivery.skip)
            self._ack(queue, method.delivery_tag, properties, event, None, "skipped", delivered_ms, delivered_ms,
                      redelivered=redelivered)  # fmt: skip
            return
        job = _Job(queue, method.delivery_tag, properties, body, event, delivered_ms, delivery.apply,
                   redelivered=redelivered)  # fmt: skip
        self._inflight[job.tag] = job
        # Whether it was applied before or a correction compensated it is looked up just before
        # the call, for a whole batch at once (screen.py).
        if delivery.batch_to is not None:
            self._batcher.add(self._conn, delivery.batch_to, job)
        else:
            job.future = self._pool.submit(self._call_mes, job, self._conn)

    def _call_mes(self, job: _Job, conn: pika.BlockingConnection) -> None:
        """Pool thread: the MES call. Never touches the channel; hands the outcome back."""
        try:
            outcome: Any = self._screen([job.event]).get(job.event.transaction_id)
            if outcome is None:
                self.stats.mes_calls += 1
                outcome = job.apply()
        except (MesUnavailable, MesRejected, MesAuthError) as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - an unexpected client error is retried, not lost
            outcome = MesUnavailable(f"unexpected error calling the MES: {exc!r}", "")
        confirmed_ms = _now_ms()
        try:
            conn.add_callback_threadsafe(partial(self._on_mes_outcome, job, outcome, confirmed_ms))
        except Exception:  # noqa: BLE001 - connection gone: the broker redelivers, the MES dedupes
            log.warning("connection closed before %s could be acked; it will be redelivered", job.event.transaction_id)

    def _on_batch_outcomes(self, jobs: list[_Job], outcomes: list[Any], confirmed_ms: int) -> None:
        """A batch's outcomes: the failed go on (retry tier, parking) one by one; the rows of the
        rest are committed in one transaction and their messages acked together."""
        settled: list[tuple[_Job, SyncRecord]] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if self._inflight.get(job.tag) is not job or self._channel is None:
                continue  # from an earlier connection; its message was redelivered
            if isinstance(outcome, PostResult):
                settled.append((job, self._settled(job, outcome, confirmed_ms)))
            else:
                self._on_mes_outcome(job, outcome, confirmed_ms)
        self._ack_many(settled)

    def _on_mes_outcome(self, job: _Job, outcome: Any, confirmed_ms: int) -> None:
        if self._inflight.get(job.tag) is not job or self._channel is None:
            return  # from an earlier connection; its message was redelivered
        if isinstance(outcome, PostResult):
            self._ack_many([(job, self._settled(job, outcome, confirmed_ms))])
            return
        self._inflight.pop(job.tag)
        if isinstance(outcome, MesAuthError):
            # Every message would fail the same way: stop, keep the message, say what to fix.
            self._channel.basic_nack(job.tag, requeue=True)
            self._fatal = outcome
        elif isinstance(outcome, MesRejected):
            self._fail(job.queue, job.tag, job.properties, job.body, f"rejected by MES: {outcome}", retryable=False)
        else:
            self._fail(job.queue, job.tag, job.properties, job.body, f"MES unavailable: {outcome}", retryable=True)

    def _settled(self, job: _Job, outcome: PostResult, confirmed_ms: int) -> SyncRecord:
        """The sync-log row of an event the MES has now."""
        status, redelivered = outcome.status, job.redelivered
        again = job.redelivered or retries_so_far(job.properties) > 0
        if status == "duplicate" and again and self.sync_log.seen(job.event.transaction_id) is None:
            # Delivered again (after a crash, or from a retry tier), and the MES already has it
            # though our log does not: an earlier attempt of ours applied it and its outcome was
            # lost. It counts once, as applied. A fresh copy (the same id published twice) stays
            # a duplicate.
            status, redelivered = "applied", True
        log.debug("%s tx=%s mes_tx=%s queue=%s", outcome.status, job.event.transaction_id,
                  outcome.mes_transaction_id, job.queue)  # fmt: skip
        return _record(job.queue, job.properties, job.event, outcome.mes_transaction_id, status, job.delivered_ms,
                       confirmed_ms, redelivered)  # fmt: skip

    def _ack(self, queue: str, tag: int, properties: pika.BasicProperties, event: InventoryEvent,
             mes_id: str | None, status: str, delivered_ms: int, confirmed_ms: int,
             *, redelivered: bool = False) -> None:  # fmt: skip
        """Log the outcome durably, then ack: a worker killed in between gets the message again,
        and its row says what happened (a row is never lost for a message acked)."""
        rec = _record(queue, properties, event, mes_id, status, delivered_ms, confirmed_ms, redelivered)
        self.sync_log.record([rec])
        self._channel.basic_ack(tag)
        self.stats.count(status, queue, redelivered)

    def _ack_many(self, settled: list[tuple[_Job, SyncRecord]]) -> None:
        """``_ack`` for many: one commit, then one ack with ``multiple`` when no message in flight
        lies below the highest tag (else one ack each: ``multiple`` would take those along). Every
        lower tag was delivered before (tags grow per channel) and is either in flight or settled."""
        if not settled:
            return
        self.sync_log.record([rec for _, rec in settled])
        tags = sorted(job.tag for job, _ in settled)
        for job, _ in settled:
            del self._inflight[job.tag]
        if len(tags) > 1 and (not self._inflight or min(self._inflight) > tags[-1]):
            self._channel.basic_ack(tags[-1], multiple=True)
        else:
            for tag in tags:
                self._channel.basic_ack(tag)
        for job, rec in settled:
            self.stats.count(rec.status, job.queue, rec.redelivered)

    def _fail(self, queue: str, tag: int, properties: pika.BasicProperties, body: bytes, reason: str,
              *, retryable: bool) -> None:  # fmt: skip
        route = send_on(self._channel, self._topology, queue, properties, body, reason, retryable=retryable)
        self._channel.basic_ack(tag)
        if route.destination == "parking":
            self.stats.parked += 1
            log.error("parked message_id=%s from %s: %s", properties.message_id, queue, reason)
        else:
            self.stats.retried += 1
            log.warning("to %s message_id=%s from %s: %s", route.destination, properties.message_id, queue, reason)


# Errors of the connection or of our own storage (the sync log): not one message's fault. They
# leave the message unacked, and the broker delivers it again once the worker is back.
_NOT_THE_MESSAGES_FAULT = (*CONNECTION_ERRORS, BrokerUnavailable, sqlite3.Error)


def _record(queue: str, properties: pika.BasicProperties, event: InventoryEvent, mes_id: str | None, status: str,
            delivered_ms: int, confirmed_ms: int, redelivered: bool) -> SyncRecord:  # fmt: skip
    return SyncRecord(event.transaction_id, mes_id, status, queue, published_ms_of(properties), delivered_ms,
                      confirmed_ms, _now_ms(), retries_so_far(properties) + 1, redelivered)  # fmt: skip


def _cutover_route(settings: Settings, live: MesApi, shadow: MesApi | None, worker_id: str) -> LiveRoute:
    """The route of a plant with the cutover layer (the one place the worker knows it exists)."""
    from invsync_pipeline.cutover.routing import CutoverRoute

    if shadow is None:
        shadow = live.at(settings.shadow_mes_url) if isinstance(live, MesClient) else live
    return CutoverRoute(settings, live, shadow, worker_id)
