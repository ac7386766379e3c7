"""Dead-letter tooling: browse the parking queue, replay what can be applied, discard the rest.

Every replay and discard is written to an audit table (SQLite ``ops.sqlite`` under
INVSYNC_HOME) with the whole message, so even a discarded message is never lost. A replay is
validated against the contract first: a message that would fail again is refused with its
reason and stays parked. A replayed event is applied once however often it is replayed,
because the MES is idempotent by transaction_id.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika

from invsync_pipeline.contract import ContractViolation, parse_event
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.retry import FAILED_QUEUE_HEADER, REASON_HEADER, RETRIES_HEADER
from invsync_pipeline.messaging.topology import RETRY_TIER_HEADER, build_topology
from invsync_pipeline.settings import Settings

_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlq_audit (
    at              TEXT NOT NULL,
    action          TEXT NOT NULL,   -- replayed | discarded | refused
    actor           TEXT NOT NULL,
    transaction_id  TEXT,
    message_id      TEXT,
    to_queue        TEXT,
    reason          TEXT,            -- why it was parked
    note            TEXT,            -- why it was discarded or refused
    body_b64        TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Parked:
    position: int
    message_id: str | None
    transaction_id: str | None
    reason: str
    failed_queue: str | None
    retries: int
    material_number: str | None
    event_time: str | None
    body: bytes
    headers: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "position": self.position, "transaction_id": self.transaction_id, "reason": self.reason,
            "failed_queue": self.failed_queue, "retries": self.retries, "material_number": self.material_number,
            "event_time": self.event_time, "bytes": len(self.body),
        }  # fmt: skip


@dataclass(frozen=True)
class Filters:
    reason: str | None = None  # substring, case-insensitive
    material: str | None = None  # glob, e.g. RAW-*
    since: datetime | None = None  # by event time
    until: datetime | None = None
    transaction_ids: tuple[str, ...] = ()

    def match(self, p: Parked) -> bool:
        if self.transaction_ids and p.transaction_id not in self.transaction_ids:
            return False
        if self.reason and self.reason.lower() not in p.reason.lower():
            return False
        if self.material and not (p.material_number and fnmatch.fnmatch(p.material_number, self.material)):
            return False
        if self.since or self.until:
            try:
                ts = datetime.fromisoformat((p.event_time or "").replace("Z", "+00:00"))
            except ValueError:
                return False
            if (self.since and ts < self.since) or (self.until and ts >= self.until):
                return False
        return True


def _parked(position: int, props: pika.BasicProperties, body: bytes) -> Parked:
    headers = dict(props.headers or {})
    reason = headers.get(REASON_HEADER)
    deaths = headers.get("x-death") or []
    if reason is None and deaths:
        reason = f"{deaths[0].get('reason')} in {deaths[0].get('queue')}"
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = {}
    data = data if isinstance(data, dict) else {}
    failed = headers.get(FAILED_QUEUE_HEADER) or (deaths[0].get("queue") if deaths else None)
    return Parked(
        position=position, message_id=props.message_id,
        transaction_id=data.get("transaction_id") if isinstance(data.get("transaction_id"), str) else props.message_id,
        reason=str(reason or "unknown"), failed_queue=failed, retries=int(headers.get(RETRIES_HEADER, 0) or 0),
        material_number=data.get("material_number") if isinstance(data.get("material_number"), str) else None,
        event_time=data.get("timestamp") if isinstance(data.get("timestamp"), str) else None,
        body=body, headers=headers,
    )  # fmt: skip


def browse(settings: Settings, filters: Filters = Filters(), limit: int = 100_000) -> list[Parked]:
    """The parked messages that match, without removing any."""
    return _walk(settings, filters, limit, act=None)


def _walk(settings: Settings, filters: Filters, limit: int, act: Callable[[Any, Parked], bool] | None) -> list[Parked]:
    """Fetch parked messages unacked; `act` decides per match whether to ack (remove) it.
    Closing the channel returns every message not acked to the queue."""
    topo = build_topology(settings)
    conn = connect(settings)
    matched: list[Parked] = []
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for position in range(limit):
            method, props, body = channel.basic_get(topo.parking, auto_ack=False)
            if method is None:
                break
            parked = _parked(position, props, body)
            if not filters.match(parked):
                continue
            matched.append(parked)
            if act is not None and act(channel, parked):
                channel.basic_ack(method.delivery_tag)
        channel.close()
    finally:
        conn.close()
    return matched


class DlqAudit:
    def __init__(self, settings: Settings):
        settings.home.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(settings.home / "ops.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_AUDIT_SCHEMA)

    def write(self, action: str, actor: str, p: Parked, to_queue: str | None, note: str | None) -> None:
        self._db.execute(
            "INSERT INTO dlq_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(),
                action,
                actor,
                p.transaction_id,
                p.message_id,
                to_queue,
                p.reason,
                note,
                base64.b64encode(p.body).decode(),
            ),  # fmt: skip
        )

    def rows(self) -> list[tuple]:
        return self._db.execute("SELECT at, action, actor, transaction_id, to_queue, note FROM dlq_audit").fetchall()

    def close(self) -> None:
        self._db.close()


@dataclass
class ReplayOutcome:
    replayed: list[Parked]
    refused: list[tuple[Parked, str]]
    dry_run: bool


def replay(settings: Settings, filters: Filters, actor: str, *, dry_run: bool = False) -> ReplayOutcome:
    """Send matching parked messages back to the queue that failed them, with a fresh retry count."""
    topo = build_topology(settings)
    outcome = ReplayOutcome([], [], dry_run)
    audit = DlqAudit(settings)

    def act(channel: Any, p: Parked) -> bool:
        try:
            event = parse_event(p.body, max_body_bytes=settings.staging.max_body_bytes)
        except ContractViolation as violation:
            outcome.refused.append((p, f"invalid: {violation}"))
            if not dry_run:
                audit.write("refused", actor, p, None, f"invalid: {violation}")
            return False
        target = p.failed_queue if p.failed_queue in topo.work_queues else _work_queue_for(settings, event)
        if target is None:
            outcome.refused.append((p, f"no work queue takes routing key {event.routing_key}"))
            return False
        outcome.replayed.append(p)
        if dry_run:
            return False
        headers = {k: v for k, v in p.headers.items()
                   if k not in (RETRIES_HEADER, RETRY_TIER_HEADER, "x-death", "x-first-death-exchange",
                                "x-first-death-queue", "x-first-death-reason")}  # fmt: skip
        headers["x-invsync-replayed-by"] = actor
        channel.basic_publish(
            topo.requeue_exchange, target, p.body,
            pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=event.transaction_id,
                                 headers=headers),
            mandatory=True,
        )  # fmt: skip
        audit.write("replayed", actor, p, target, None)
        return True  # the copy is confirmed (confirm mode): remove the parked one

    try:
        _walk(settings, filters, 100_000, act)
    finally:
        audit.close()
    return outcome


def discard(settings: Settings, filters: Filters, actor: str, note: str, *, dry_run: bool = False) -> list[Parked]:
    """Remove matching parked messages; the audit keeps each one whole, with who and why."""
    if not note or not note.strip():
        raise ValueError("a discard needs --note saying why (it goes into the audit with the message)")
    audit = DlqAudit(settings)

    def act(_channel: Any, p: Parked) -> bool:
        if dry_run:
            return False
        audit.write("discarded", actor, p, None, note)
        return True

    try:
        return _walk(settings, filters, 100_000, act)
    finally:
        audit.close()


def _work_queue_for(settings: Settings, event: Any) -> str | None:
    wh = event.warehouse.lower()
    for plant in settings.topology.plants:
        if plant.warehouse.lower() != wh:
            continue
        for pq in plant.queues:
            if ("*" in pq.material_types or event.material_type in pq.material_types) and (
                event.transaction_type in pq.transaction_types
            ):
                return settings.name(f"plant.{wh}.{pq.name}")
    return None
