"""The RabbitMQ topology as data: declared idempotently, exported as a definitions file.

Names (all prefixed by the settings' namespace):

- ``inventory`` (topic): every movement, routing key ``inventory.{wh}.{material_type}.{tx_type}``
- ``plant.{wh}.{queue}``: the work queues of each plant, bound by the patterns in the config
- ``ledger.tap``: bound to ``inventory.#``; drained into the staged event log by the sensor
- ``inventory.retry`` (headers) -> ``retry.1`` / ``retry.2`` / ``retry.3``: TTL queues that
  dead-letter to ``inventory.requeue`` (direct), where each work queue is bound by its own
  name. A retried message therefore returns to the one queue that failed it, not to every
  queue its routing key matches (the ledger tap has it already).
- ``inventory.dlx`` (fanout) -> ``parking``: messages that failed every retry, were invalid,
  or expired after the 24 h TTL. Nothing is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.settings import NON_CRITICAL_TRANSACTION_TYPES, Settings

# Not "x-" prefixed: a headers exchange ignores x- headers when matching with x-match=all, so
# "x-invsync-retry-tier" would match every tier and copy a failed message into all of them.
RETRY_TIER_HEADER = "invsync-retry-tier"


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any]
    role: str  # work | tap | retry | parking


@dataclass(frozen=True)
class Binding:
    source: str
    destination: str
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    exchange: str
    requeue_exchange: str
    retry_exchange: str
    dead_letter_exchange: str
    ledger_tap: str
    parking: str
    work_queues: tuple[str, ...]
    retry_queues: tuple[str, ...]
    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]
    # Work queues that carry only adjustments and cycle counts (consumed in low-activity windows).
    noncritical_queues: tuple[str, ...] = ()
    # (queue, warehouse lower case, material types or ("*",), transaction types) of each work queue.
    routes: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = ()

    @property
    def critical_queues(self) -> tuple[str, ...]:
        return tuple(q for q in self.work_queues if q not in self.noncritical_queues)

    def work_queue_for(self, warehouse: str, material_type: str, transaction_type: str) -> str | None:
        """The work queue an event with these routing tokens lands in (the first that binds it)."""
        for queue, wh, material_types, transaction_types in self.routes:
            if (
                wh == warehouse.lower()
                and ("*" in material_types or material_type in material_types)
                and (transaction_type in transaction_types)
            ):
                return queue
        return None


def build_topology(settings: Settings) -> Topology:
    """Every exchange, queue and binding the config asks for, in declaration order."""
    cfg = settings.topology
    n = settings.name
    exchange, requeue, retry, dlx = (n(cfg.exchange), n(f"{cfg.exchange}.requeue"),
                                     n(f"{cfg.exchange}.retry"), n(f"{cfg.exchange}.dlx"))  # fmt: skip
    tap, parking = n(cfg.ledger_tap_queue), n("parking")

    def queue_args(*, ttl_ms: int | None, dead_letter_exchange: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": settings.queue_type}
        if ttl_ms is not None:
            args["x-message-ttl"] = ttl_ms
        if dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = dead_letter_exchange
            if settings.queue_type == "quorum":
                # Quorum queues drop dead letters unless told to confirm them (at-least-once),
                # which RabbitMQ allows only together with reject-publish on overflow.
                args["x-dead-letter-strategy"] = "at-least-once"
                args["x-overflow"] = "reject-publish"
        return args

    exchanges = (
        Exchange(exchange, "topic"),
        Exchange(requeue, "direct"),
        Exchange(retry, "headers"),
        Exchange(dlx, "fanout"),
    )
    queues: list[Queue] = []
    bindings: list[Binding] = []
    work: list[str] = []
    noncritical: list[str] = []
    routes = []
    for plant in cfg.plants:
        wh = plant.warehouse.lower()
        for pq in plant.queues:
            name = n(f"plant.{wh}.{pq.name}")
            work.append(name)
            routes.append((name, wh, tuple(pq.material_types), tuple(pq.transaction_types)))
            if set(pq.transaction_types) <= set(NON_CRITICAL_TRANSACTION_TYPES):
                noncritical.append(name)
            queues.append(Queue(name, queue_args(ttl_ms=cfg.message_ttl_ms, dead_letter_exchange=dlx), "work"))
            material_types = ("*",) if "*" in pq.material_types else pq.material_types
            for mt in material_types:
                for tt in pq.transaction_types:
                    bindings.append(Binding(exchange, name, f"inventory.{wh}.{mt}.{tt}"))
            bindings.append(Binding(requeue, name, name))
    # One tap for every plant, or one per plant (each plant's code location drains its own).
    taps = ([(n(f"{cfg.ledger_tap_queue}.{p.warehouse.lower()}"), f"inventory.{p.warehouse.lower()}.#")
             for p in cfg.plants] if cfg.tap_per_plant else [(tap, "inventory.#")])  # fmt: skip
    for name, pattern in taps:
        queues.append(Queue(name, queue_args(ttl_ms=cfg.message_ttl_ms, dead_letter_exchange=dlx), "tap"))
        bindings.append(Binding(exchange, name, pattern))
        bindings.append(Binding(requeue, name, name))
    if cfg.tap_per_plant:
        # The tap this process drains: its plant's; none without a plant (drain_ledger_tap says so).
        tap = n(f"{cfg.ledger_tap_queue}.{settings.plant.lower()}") if settings.plant else ""
    retry_names: list[str] = []
    for tier, delay_ms in enumerate(cfg.retry_delays_ms, start=1):
        name = n(f"retry.{tier}")
        retry_names.append(name)
        queues.append(Queue(name, queue_args(ttl_ms=delay_ms, dead_letter_exchange=requeue), "retry"))
        bindings.append(Binding(retry, name, "", {"x-match": "all", RETRY_TIER_HEADER: str(tier)}))
    queues.append(Queue(parking, {"x-queue-type": settings.queue_type}, "parking"))
    bindings.append(Binding(dlx, parking))
    return Topology(
        exchange=exchange, requeue_exchange=requeue, retry_exchange=retry, dead_letter_exchange=dlx,
        ledger_tap=tap, parking=parking, work_queues=tuple(work), retry_queues=tuple(retry_names),
        exchanges=exchanges, queues=tuple(queues), bindings=tuple(bindings),
        noncritical_queues=tuple(noncritical), routes=tuple(routes),
    )  # fmt: skip


class TopologyConflict(RuntimeError):
    """The broker already has an exchange or queue of that name with other settings."""


def apply_topology(settings: Settings, connection: pika.BlockingConnection | None = None) -> Topology:
    """Declare everything; declaring again with the same config changes nothing."""
    topo = build_topology(settings)
    own = connection is None
    conn = connection or connect(settings)
    try:
        channel = conn.channel()
        for ex in topo.exchanges:
            channel = _declare(
                conn,
                channel,
                f"exchange {ex.name!r}",
                lambda ch, ex=ex: ch.exchange_declare(
                    ex.name, exchange_type=ex.type, durable=True, arguments=ex.arguments or None
                ),
            )
        for q in topo.queues:
            channel = _declare(
                conn,
                channel,
                f"queue {q.name!r}",
                lambda ch, q=q: ch.queue_declare(q.name, durable=True, arguments=q.arguments),
            )
        for b in topo.bindings:
            channel.queue_bind(b.destination, b.source, routing_key=b.routing_key, arguments=b.arguments or None)
        channel.close()
    finally:
        if own:
            conn.close()
    return topo


def _declare(conn: pika.BlockingConnection, channel: Any, what: str, declare: Any) -> Any:
    try:
        declare(channel)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyConflict(
                f"{what} already exists on the broker with other settings ({exc.reply_text}). "
                "Either change the config back, or drain and delete it (`invsync topology delete`) "
                "and apply again."
            ) from exc
        raise


def delete_topology(settings: Settings, connection: pika.BlockingConnection | None = None) -> Topology:
    """Delete every queue and exchange of the topology (messages in them are lost)."""
    topo = build_topology(settings)
    own = connection is None
    conn = connection or connect(settings)
    try:
        channel = conn.channel()
        for q in topo.queues:
            channel.queue_delete(q.name)
        for ex in topo.exchanges:
            channel.exchange_delete(ex.name)
        channel.close()
    finally:
        if own:
            conn.close()
    return topo


def export_definitions(settings: Settings) -> dict[str, Any]:
    """The topology as a RabbitMQ definitions document (``rabbitmqctl import_definitions``)."""
    topo = build_topology(settings)
    vhost = pika.URLParameters(settings.amqp_urls[0]).virtual_host
    return {
        "rabbit_version": "3.10.8",
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {"name": ex.name, "vhost": vhost, "type": ex.type, "durable": True, "auto_delete": False,
             "internal": False, "arguments": ex.arguments}
            for ex in topo.exchanges
        ],
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": q.arguments}
            for q in topo.queues
        ],
        "bindings": [
            {"source": b.source, "vhost": vhost, "destination": b.destination, "destination_type": "queue",
             "routing_key": b.routing_key, "arguments": b.arguments}
            for b in topo.bindings
        ],
    }  # fmt: skip


def export_json(settings: Settings) -> str:
    return json.dumps(export_definitions(settings), indent=2, sort_keys=False)


__all__ = [
    "RETRY_TIER_HEADER",
    "Topology",
    "TopologyConflict",
    "apply_topology",
    "build_topology",
    "delete_topology",
    "export_definitions",
]
