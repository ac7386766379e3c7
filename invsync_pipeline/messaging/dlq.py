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
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions

from invsync_pipeline.contract import ContractLimits, ContractViolation, best_effort_fields, instant_of, parse_event
from invsync_pipeline.messaging.amqp_headers import why_not_republishable
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.retry import FAILED_QUEUE_HEADER, REASON_HEADER, RETRIES_HEADER, retries_so_far
from invsync_pipeline.messaging.topology import RETRY_TIER_HEADER, build_topology
from invsync_pipeline.settings import Settings

# A lost connection ends the walk: what was not acked stays parked.
_CONNECTION_LOST = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError,
                    pika.exceptions.ChannelWrongStateError, pika.exceptions.ChannelClosed)  # fmt: skip

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


# What browsing the parking queue raises when the broker (or the queue) cannot be reached.
BROKER_UNREACHABLE = (ConnectionError, pika.exceptions.AMQPError)


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

    @property
    def event_at(self) -> datetime | None:
        """The event timestamp in UTC, or None when it has none or it cannot be read."""
        try:
            ts = instant_of(self.event_time or "")
        except (ValueError, OverflowError):
            return None
        return ts.astimezone(UTC) if ts.tzinfo else None

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
                ts = instant_of(p.event_time or "")
                if (self.since and ts < self.since) or (self.until and ts >= self.until):
                    return False
            except (ValueError, TypeError, OverflowError):  # not an instant (or one without offset)
                return False
        return True


def _parked(position: int, props: pika.BasicProperties, body: bytes) -> Parked:
    """What a parked message says about itself, read as far as it can be: whatever a sender
    wrote into its body or headers, this never raises (every tool here lists it)."""
    headers = dict(props.headers or {}) if isinstance(props.headers, dict) else {}
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    reason = headers.get(REASON_HEADER)
    if reason is None and death:
        reason = f"{death.get('reason')} in {death.get('queue')}"
    data = best_effort_fields(body)
    failed = headers.get(FAILED_QUEUE_HEADER) or death.get("queue")
    message_id = _text(props.message_id)
    transaction_id, material, event_time = (
        data.get(name) if isinstance(data.get(name), str) else None
        for name in ("transaction_id", "material_number", "timestamp")
    )
    return Parked(
        position=position, message_id=message_id, transaction_id=transaction_id or message_id,
        reason=_text(reason) or "unknown", failed_queue=_text(failed), retries=retries_so_far(props),
        material_number=material, event_time=event_time, body=bytes(body), headers=headers,
    )  # fmt: skip


def _text(value: Any) -> str | None:
    """A header or property as text (pika hands over bytes when it is not UTF-8)."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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

    limits = ContractLimits.from_settings(settings)

    def act(channel: Any, p: Parked) -> bool:
        try:
            return replay_one(channel, p)
        except _CONNECTION_LOST:
            raise
        except Exception as exc:  # noqa: BLE001 - one message that cannot be replayed stays parked
            why = f"could not be replayed: {type(exc).__name__}: {exc}"
            outcome.refused.append((p, why))
            if not dry_run:
                audit.write("refused", actor, p, None, why)
            return False

    def replay_one(channel: Any, p: Parked) -> bool:
        try:
            event = parse_event(p.body, limits=limits)
        except ContractViolation as violation:
            outcome.refused.append((p, f"invalid: {violation}"))
            if not dry_run:
                audit.write("refused", actor, p, None, f"invalid: {violation}")
            return False
        target = p.failed_queue if p.failed_queue in topo.work_queues else None
        target = target or topo.work_queue_for(event.warehouse, event.material_type, event.transaction_type)
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
        if why_not_republishable(headers) is not None:
            # The sender's headers cannot travel again (too big for a frame, or a value pika will
            # not encode): the event goes on with ours only; the audit keeps the parked copy whole.
            headers = {"x-invsync-replayed-by": actor}
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
