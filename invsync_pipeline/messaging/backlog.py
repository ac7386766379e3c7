"""What the pipeline still holds: the ERP outbox, messages in the work, retry and parking queues, and the quarantine.

Queues are browsed without consuming: messages are fetched unacked and the channel is closed,
which returns them to their queues (marked redelivered; consumers de-duplicate by
transaction_id). The count browsed per queue is bounded.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import pika.exceptions

from invsync_pipeline.contract import best_effort_fields
from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.retry import REASON_HEADER
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings


@dataclass(frozen=True)
class HeldMessage:
    transaction_id: str | None
    place: str
    kind: str  # in_flight (the outbox) | pending_sync | retrying | dead_lettered | quarantined
    material_number: str | None
    location: str | None
    unit: str | None
    quantity_effect: Decimal | None
    to_location: str | None
    reason: str | None
    timestamp: str | None


def _effect(data: dict[str, Any]) -> Decimal | None:
    try:
        q = Decimal(str(data.get("quantity")))
    except (InvalidOperation, ValueError):
        return None
    if not q.is_finite():
        return None
    return -q if data.get("transaction_type") in ("issue", "transfer") else q


def _held(data: dict[str, Any], place: str, kind: str, reason: str | None, message_id: str | None) -> HeldMessage:
    return HeldMessage(
        transaction_id=data.get("transaction_id") if isinstance(data.get("transaction_id"), str) else message_id,
        place=place, kind=kind,
        material_number=data.get("material_number") if isinstance(data.get("material_number"), str) else None,
        location=data.get("location") if isinstance(data.get("location"), str) else None,
        unit=data.get("unit") if isinstance(data.get("unit"), str) else None,
        quantity_effect=_effect(data),
        to_location=data.get("to_location") if isinstance(data.get("to_location"), str) else None,
        reason=reason,
        timestamp=data.get("timestamp") if isinstance(data.get("timestamp"), str) else None,
    )  # fmt: skip


def outbox_backlog(settings: Settings) -> list[HeldMessage]:
    """Events the ERP outbox still holds: published by the ERP, not yet confirmed by the broker
    (during a broker outage, hours of them). Read without taking the outbox's write lock."""
    path = settings.outbox_path
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute("SELECT transaction_id, body FROM outbox ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []  # a file without the table yet: nothing buffered
    finally:
        db.close()
    reason = "buffered in the ERP outbox, not yet confirmed by the broker"
    return [
        _held({**best_effort_fields(body), "transaction_id": tx}, "outbox", "in_flight", reason, tx)
        for tx, body in rows
    ]


def browse_backlog(
    settings: Settings, *, per_queue_limit: int = 10_000, on_broker_error: Callable[[Exception], None] | None = None
) -> list[HeldMessage]:
    """Everything in the ERP outbox, queued for the MES, retrying or parked, plus the staged
    quarantine. With ``on_broker_error``, a broker that cannot be read is reported there and the
    rest is still returned (during an outage the outbox holds what matters); without, it raises."""
    held: list[HeldMessage] = outbox_backlog(settings)
    try:
        held += _queued(settings, per_queue_limit)
    except (BrokerUnavailable, pika.exceptions.AMQPError) as exc:
        if on_broker_error is None:
            raise
        on_broker_error(exc)
    for row in StagedEventLog(settings.staged_dir).quarantined():
        body = base64.b64decode(row["body_b64"])
        held.append(_held(best_effort_fields(body), "quarantine", "quarantined", row["reason"], row.get("message_id")))
    return held


def _queued(settings: Settings, per_queue_limit: int) -> list[HeldMessage]:
    topo = build_topology(settings)
    held: list[HeldMessage] = []
    places = [(q, "pending_sync") for q in topo.work_queues]
    places += [(q, "retrying") for q in topo.retry_queues]
    places += [(topo.parking, "dead_lettered")]
    conn = connect(settings)
    try:
        for queue, kind in places:
            channel = conn.channel()
            try:
                for _ in range(per_queue_limit):
                    method, props, body = channel.basic_get(queue, auto_ack=False)
                    if method is None:
                        break
                    headers = props.headers or {}
                    reason = headers.get(REASON_HEADER)
                    if reason is None and kind == "dead_lettered" and headers.get("x-death"):
                        reason = f"expired ({headers['x-death'][0].get('reason')})"
                    held.append(_held(best_effort_fields(body), queue, kind, reason, props.message_id))
            finally:
                channel.close()  # returns every fetched message to its queue
    finally:
        conn.close()
    return held
