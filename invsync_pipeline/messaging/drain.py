"""Drain the ledger tap queue into the staged event log, acking only what is durably on disk.

One call drains in bounded batches (count and time from ``staging`` settings) and stops when
the queue is empty, the event budget is spent or the time budget runs out, whichever comes
first, so a Dagster sensor tick always finishes well inside its 60 s limit.

Per batch: validate every message; write valid events into one segment per hour and invalid
ones into a quarantine segment (each fsynced); only then ack the batch with one multiple-ack.
A crash anywhere before the ack leaves the messages unacked, so the broker delivers them
again; the copies already written are harmless because every reader de-duplicates by
transaction_id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pika

from invsync_pipeline.contract import ContractViolation, InventoryEvent, parse_event
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.staged_log import (
    QuarantinedMessage,
    StagedEventLog,
    new_segment_id,
    partition_key_of,
    utc_now_iso,
)
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Pause between polls while a batch fills; short, so an idle queue ends a tick quickly.
_POLL_SECONDS = 0.05
# With nothing new for this long, the queue is taken to be empty for this tick.
_IDLE_SECONDS = 0.25


@dataclass
class DrainResult:
    consumed: int = 0
    staged: int = 0
    quarantined: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped_because: str = ""
    partitions: dict[str, int] = field(default_factory=dict)  # partition key -> events staged
    segments: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"drained {self.consumed} messages in {self.batches} batches ({self.seconds:.1f} s): "
                f"{self.staged} staged, {self.quarantined} quarantined; stopped: {self.stopped_because}")  # fmt: skip


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
    result = DrainResult()
    started = time.monotonic()
    deadline = started + budget_seconds

    own = connection is None
    conn = connection or connect(settings)
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
                _stage_batch(batch, staged_log, settings, result, after_write)
                channel.basic_ack(batch[-1].tag, multiple=True)
                result.consumed += len(batch)
                result.batches += 1
                batch = []
            if idle:
                result.stopped_because = "queue empty"
                break
            if time.monotonic() >= deadline:
                result.stopped_because = "time budget spent"
                break
        # Anything prefetched but not staged stays unacked; closing the channel returns it.
        channel.basic_cancel(consumer_tag)
    finally:
        if channel.is_open:
            channel.close()
        if own and conn.is_open:
            conn.close()
    result.seconds = time.monotonic() - started
    return result


def _stage_batch(
    batch: list[_Delivery],
    staged_log: StagedEventLog,
    settings: Settings,
    result: DrainResult,
    after_write: Callable[[list[str]], None] | None,
) -> None:
    received_at = utc_now_iso()
    max_body = settings.staging.max_body_bytes
    by_partition: dict[str, list[str]] = {}
    bad: list[QuarantinedMessage] = []
    for delivery in batch:
        try:
            event = parse_event(delivery.body, max_body_bytes=max_body)
        except ContractViolation as violation:
            bad.append(_quarantined(delivery, violation, received_at))
            continue
        key = partition_key_of(event.timestamp)
        by_partition.setdefault(key, []).append(_row(event, delivery, received_at))
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


def _row(event: InventoryEvent, delivery: _Delivery, received_at: str) -> str:
    row = event.to_message()
    row["received_at"] = received_at
    row["routing_key"] = delivery.routing_key
    published = delivery.properties.timestamp
    row["published_at"] = (
        datetime.fromtimestamp(published, UTC).isoformat().replace("+00:00", "Z") if published else None
    )
    return json.dumps(row, separators=(",", ":"))


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
