"""Drain the ledger tap queue into the staged event log, acking only what is durably on disk.

One call drains in bounded batches (count and time from ``staging`` settings) and stops when
the queue is empty, the event budget is spent or the time budget runs out, whichever comes
first, so a Dagster sensor tick always finishes well inside its 60 s limit.

Per batch: validate every message; write valid events into one segment per hour and invalid
ones into a quarantine segment (each fsynced); only then ack the batch with one multiple-ack.
After the ack, each event segment gets its Parquet twin (messaging/staged_log.py), which staging
reads instead: it is never what an ack waits for, and a twin not written costs speed, not data.
A crash anywhere before the ack leaves the messages unacked, so the broker delivers them
again; the copies already written are harmless because every reader de-duplicates by
transaction_id.

A connection lost in the middle is not the end of the drain: it reconnects and goes on within
its time budget (counted in ``DrainResult.reconnects``). Whatever was written but not acked is
simply delivered again. No message, however malformed, stops it: each is staged or quarantined.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pika
import pika.exceptions

from invsync_pipeline.contract import ContractLimits, ContractViolation, InventoryEvent, instant_text, parse_event
from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.staged_log import (
    QuarantinedMessage,
    StagedEventLog,
    columnar_twins,
    new_segment_id,
    twin_writer,
    utc_now_iso,
)
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.partitions import partition_key_of
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Pause between polls while a batch fills; short, so an idle queue ends a tick quickly.
_POLL_SECONDS = 0.05
# With nothing new for this long, the queue is taken to be empty for this tick.
_IDLE_SECONDS = 0.25
# What a lost connection raises, wherever the drain is: reconnect and go on.
_CONNECTION_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
)


@dataclass
class DrainResult:
    consumed: int = 0
    staged: int = 0
    quarantined: int = 0
    batches: int = 0
    reconnects: int = 0  # connections lost mid-drain and opened again
    seconds: float = 0.0
    stopped_because: str = ""
    partitions: dict[str, int] = field(default_factory=dict)  # partition key -> events staged
    segments: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reconnected = f", {self.reconnects} reconnects after a lost connection" if self.reconnects else ""
        return (f"drained {self.consumed} messages in {self.batches} batches ({self.seconds:.1f} s): "
                f"{self.staged} staged, {self.quarantined} quarantined{reconnected}; "
                f"stopped: {self.stopped_because}")  # fmt: skip


@dataclass
class _Delivery:
    tag: int
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


def drain_ledger_tap(
    settings: Settings,
    *,
    max_seconds: float | None = None,
    max_events: int | None = None,
    connection: pika.BlockingConnection | None = None,
    after_write: Callable[[list[str]], None] | None = None,
) -> DrainResult:
    """Drain until the tap is empty or a budget is spent. ``after_write`` runs after a batch is
    durable and before it is acked (tests use it to crash exactly there)."""
    cfg = settings.staging
    budget_seconds = cfg.tick_max_seconds if max_seconds is None else max_seconds
    budget_events = max_events if max_events is not None else float("inf")
    staged_log = StagedEventLog(settings.staged_dir)
    queue = build_topology(settings).ledger_tap
    if not queue:
        raise ValueError("topology.tap_per_plant is on: each plant drains its own ledger tap; set INVSYNC_PLANT "
                         "to the plant whose tap to drain")  # fmt: skip
    result = DrainResult()
    started = time.monotonic()
    deadline = started + budget_seconds

    own = connection is None
    conn: pika.BlockingConnection | None = connection or connect(settings)
    twins = _Twins()
    try:
        while conn is not None:
            try:
                _drain(conn, queue, staged_log, settings, result, deadline, budget_events, after_write, twins)
                break
            except _CONNECTION_LOST as exc:
                result.reconnects += 1
                log.warning("lost the broker connection while draining (%r); reconnecting (%d so far). "
                            "Messages written but not acked are delivered again.", exc, result.reconnects)  # fmt: skip
                if own:
                    _close_quietly(conn)
                conn, own = _reconnect(settings, deadline), True
                if conn is None:
                    result.stopped_because = "broker connection lost; not back within the time budget"
    finally:
        twins.close()
        if own and conn is not None:
            _close_quietly(conn)
    result.seconds = time.monotonic() - started
    return result


def _drain(
    conn: pika.BlockingConnection,
    queue: str,
    staged_log: StagedEventLog,
    settings: Settings,
    result: DrainResult,
    deadline: float,
    budget_events: float,
    after_write: Callable[[list[str]], None] | None,
    twins: _Twins,
) -> None:
    """Drain on one connection until done (sets ``result.stopped_because``); a lost connection
    raises out of here, leaving everything not acked to the broker."""
    cfg = settings.staging
    limits = ContractLimits.from_settings(settings)
    channel = conn.channel()
    try:
        channel.basic_qos(prefetch_count=min(cfg.batch_max_events, 65535))
        inbox: list[_Delivery] = []

        def on_message(_ch, method, properties, body):  # runs on this thread, inside process_data_events
            inbox.append(_Delivery(method.delivery_tag, method.routing_key, properties, body))

        consumer_tag = channel.basic_consume(queue, on_message_callback=on_message)
        batch: list[_Delivery] = []
        while True:
            limit = int(min(cfg.batch_max_events, budget_events - result.consumed))
            if limit <= 0:
                result.stopped_because = "event budget spent"
                break
            batch_deadline = min(time.monotonic() + cfg.batch_max_seconds, deadline)
            last_arrival = time.monotonic()
            idle = False
            while len(batch) < limit:
                if inbox:
                    take = limit - len(batch)
                    batch.extend(inbox[:take])
                    del inbox[:take]
                    last_arrival = time.monotonic()
                    continue
                now = time.monotonic()
                if now >= batch_deadline:
                    break
                if now - last_arrival >= _IDLE_SECONDS:
                    idle = True
                    break
                conn.process_data_events(time_limit=min(_POLL_SECONDS, batch_deadline - now))
            if batch:
                segments = _stage_batch(batch, staged_log, limits, result, after_write)
                channel.basic_ack(batch[-1].tag, multiple=True)
                result.consumed += len(batch)
                result.batches += 1
                batch = []
                twins.write(segments)
            if idle:
                result.stopped_because = "queue empty"
                break
            if time.monotonic() >= deadline:
                result.stopped_because = "time budget spent"
                break
        # Anything prefetched but not staged stays unacked; closing the channel returns it.
        channel.basic_cancel(consumer_tag)
    finally:
        # On a lost connection the channel is gone too; closing it would only raise again.
        with contextlib.suppress(*_CONNECTION_LOST):
            if channel.is_open:
                channel.close()


def _reconnect(settings: Settings, deadline: float) -> pika.BlockingConnection | None:
    """A new connection, retried with a short backoff until ``deadline``; None if none came."""
    pause = 0.2
    while time.monotonic() + pause < deadline:
        time.sleep(pause)  # a moment for the network or the broker; never a tight loop
        try:
            return connect(settings)
        except BrokerUnavailable as exc:
            log.warning("reconnecting to drain: %s", exc)
            pause = min(pause * 2, 2.0)
    log.error("no broker connection again before the drain's time budget ran out")
    return None


def _close_quietly(conn: pika.BlockingConnection) -> None:
    with contextlib.suppress(*_CONNECTION_LOST):
        if conn.is_open:
            conn.close()


class _Twins:
    """Writes the Parquet twins of acked segments through one DuckDB connection per drain, opened
    at the first batch. Best effort: the segments are the durable copy, and staging reads a
    segment without a twin as it is."""

    def __init__(self) -> None:
        self._con: duckdb.DuckDBPyConnection | None = None

    def write(self, segments: list[Path]) -> None:
        try:
            if self._con is None:
                self._con = twin_writer()
            columnar_twins(segments, self._con)
        except Exception:  # noqa: BLE001 - invariant 3: a twin not written never stops the drain
            log.exception("Parquet twins of %d segments not written; staging reads their JSON Lines", len(segments))

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _stage_batch(
    batch: list[_Delivery],
    staged_log: StagedEventLog,
    limits: ContractLimits,
    result: DrainResult,
    after_write: Callable[[list[str]], None] | None,
) -> list[Path]:
    """Write the batch durably (events per hour, the invalid to the quarantine); the event segments."""
    received_at = utc_now_iso()
    by_partition: dict[str, list[str]] = {}
    bad: list[QuarantinedMessage] = []
    for delivery in batch:
        try:
            event = parse_event(delivery.body, limits=limits)
            row = _row(event, delivery, received_at)
        except ContractViolation as violation:
            bad.append(_quarantined(delivery, violation, received_at))
            continue
        except Exception as exc:  # noqa: BLE001 - invariant 3: one message never stops the drain
            log.exception("unexpected error on message_id=%r; quarantining it", delivery.properties.message_id)
            unexpected = ContractViolation("body", delivery.body[:40], f"unexpected error: {type(exc).__name__}: {exc}")
            bad.append(_quarantined(delivery, unexpected, received_at))
            continue
        by_partition.setdefault(partition_key_of(event.timestamp), []).append(row)
    segment_id = new_segment_id()
    paths = staged_log.write_events(by_partition, segment_id)
    quarantine_path = staged_log.write_quarantine(bad, segment_id)
    written = [str(p) for p in paths] + ([str(quarantine_path)] if quarantine_path else [])
    if after_write is not None:
        after_write(written)
    result.segments.append(segment_id)
    for key, rows in by_partition.items():
        result.partitions[key] = result.partitions.get(key, 0) + len(rows)
        result.staged += len(rows)
    result.quarantined += len(bad)
    if bad:
        log.warning("quarantined %d invalid messages in %s, first: %s", len(bad), quarantine_path, bad[0].rule)
    return paths


def _row(event: InventoryEvent, delivery: _Delivery, received_at: str) -> str:
    row = event.to_message()
    row["received_at"] = received_at
    row["routing_key"] = delivery.routing_key
    row["published_at"] = _published_at(delivery.properties.timestamp)
    return json.dumps(row, separators=(",", ":"))


def _published_at(timestamp: object) -> str | None:
    """The AMQP timestamp property as UTC text; None when absent or not a real instant (it is
    the sender's to set, and a broken one must not keep a valid event out of the log)."""
    if not timestamp:
        return None
    try:
        return instant_text(datetime.fromtimestamp(timestamp, UTC))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _quarantined(delivery: _Delivery, violation: ContractViolation, received_at: str) -> QuarantinedMessage:
    value = violation.value
    return QuarantinedMessage(
        received_at=received_at,
        routing_key=delivery.routing_key,
        message_id=delivery.properties.message_id,
        field=violation.field,
        value=str(value)[:200],
        rule=violation.rule,
        body=delivery.body,
        headers=delivery.properties.headers,
    )
