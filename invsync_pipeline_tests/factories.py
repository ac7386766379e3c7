"""Small builders for test events and a confirmed publisher on the real broker."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pika

_ids = itertools.count(1)
# A closed hour a little while ago: the contract refuses timestamps older than its horizon
# (400 days by default), so a fixed date would make every test fail as the calendar moves on.
RECENT = (datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3, minutes=-15)).strftime(
    "%Y-%m-%dT%H:%M:%SZ"
)


def event(**overrides: Any) -> dict[str, Any]:
    """A valid contract-v1 receipt; override any field (None removes it)."""
    n = next(_ids)
    body: dict[str, Any] = {
        "schema_version": "1",
        "transaction_id": f"TX-{n:08d}",
        "timestamp": RECENT,
        "source_system": "ERP",
        "material_number": "MAT-100",
        "material_type": "raw",
        "quantity": "10",
        "unit": "KG",
        "location": "WH01/RM01",
        "transaction_type": "receipt",
        "reason": "purchase_receipt",
        "erp_reference": f"49000{n:05d}",
        "movement_type": "101",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def routing_key_of(body: dict[str, Any]) -> str:
    wh = str(body.get("location", "WH01/X")).split("/")[0].lower()
    return f"inventory.{wh}.{body.get('material_type', 'raw')}.{body.get('transaction_type', 'receipt')}"


def publish_raw(connection: pika.BlockingConnection, exchange: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish (routing key, body) pairs persistently and wait until the broker confirmed all."""
    channel = connection.channel()
    channel.confirm_delivery()
    for key, body in messages:
        channel.basic_publish(exchange, key, body, pika.BasicProperties(delivery_mode=2,
                              content_type="application/json"), mandatory=True)  # fmt: skip
    channel.close()


def publish_events(connection: pika.BlockingConnection, exchange: str, events: list[dict[str, Any]]) -> None:
    publish_raw(connection, exchange, [(routing_key_of(e), json.dumps(e).encode()) for e in events])


def queue_depth(connection: pika.BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    finally:
        channel.close()
