"""Where a message goes when its consumer cannot handle it: the next retry tier, or parking.

The retry count lives in our own header (``x-invsync-retries``), not in ``x-death``: x-death
is rewritten by the broker on every dead-lettering and differs between classic and quorum
queues. The reason travels in ``x-invsync-reason`` so the parking queue says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from invsync_pipeline.messaging.amqp_headers import why_not_republishable
from invsync_pipeline.messaging.topology import RETRY_TIER_HEADER, Topology

log = logging.getLogger(__name__)

RETRIES_HEADER = "x-invsync-retries"
REASON_HEADER = "x-invsync-reason"
FAILED_QUEUE_HEADER = "x-invsync-failed-queue"
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class FailureRoute:
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    destination: str  # "retry.N" or "parking", for logs and metrics


def retries_so_far(properties: pika.BasicProperties | None) -> int:
    headers = (properties.headers if properties else None) or {}
    try:
        return max(0, int(headers.get(RETRIES_HEADER, 0)))
    except (TypeError, ValueError, OverflowError):  # a sender's header: any type, even inf
        return 0


def route_failure(
    topology: Topology,
    queue: str,
    properties: pika.BasicProperties | None,
    reason: str,
    *,
    retryable: bool = True,
) -> FailureRoute:
    """The next stop of a message that ``queue`` failed: retry tier n+1, or parking."""
    headers = dict((properties.headers if properties else None) or {})
    retries = retries_so_far(properties)
    headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
    headers[FAILED_QUEUE_HEADER] = queue
    if retryable and retries < len(topology.retry_queues):
        tier = retries + 1
        headers[RETRIES_HEADER] = tier
        headers[RETRY_TIER_HEADER] = str(tier)
        # Routed by header to retry.N; its TTL dead-letters it to the requeue exchange with
        # this routing key, which is bound to exactly the queue that failed it.
        return FailureRoute(topology.retry_exchange, queue, headers, f"retry.{tier}")
    headers.pop(RETRY_TIER_HEADER, None)
    return FailureRoute(topology.dead_letter_exchange, queue, headers, "parking")


def publish_failure(
    channel: Any,
    topology: Topology,
    queue: str,
    properties: pika.BasicProperties | None,
    body: bytes,
    reason: str,
    *,
    retryable: bool = True,
) -> FailureRoute:
    """Republish a failed message to its next stop. Ack the original only after this returns
    on a channel in confirm mode: then the copy is safely with the broker."""
    route = route_failure(topology, queue, properties, reason, retryable=retryable)
    props = pika.BasicProperties(
        content_type=(properties.content_type if properties else None) or "application/json",
        delivery_mode=2,
        message_id=properties.message_id if properties else None,
        timestamp=properties.timestamp if properties else None,
        headers=route.headers,
    )
    channel.basic_publish(route.exchange, route.routing_key, body, properties=props, mandatory=True)
    return route


# Errors of the connection or of the channel: not the message's fault. They leave it unacked, and
# the broker delivers it again once the consumer is back.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ChannelClosed,
)


def send_on(
    channel: Any,
    topology: Topology,
    queue: str,
    properties: pika.BasicProperties,
    body: bytes,
    reason: str,
    *,
    retryable: bool,
) -> FailureRoute:
    """``publish_failure``, and if the sender's headers cannot travel on (a type pika cannot encode
    again, a table too big for a frame once the reason is added), the body goes on whole with our
    headers only and the reason says so. Connection errors propagate: the message stays unacked."""
    dropped = why_not_republishable(properties.headers)
    if dropped is None:
        try:
            return publish_failure(channel, topology, queue, properties, body, reason, retryable=retryable)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the sender's headers, not the message, failed to publish
            dropped = f"{type(exc).__name__}: {exc}"[:300]
    log.warning("message_id=%r from %s: sending it on without the sender's headers (%s)",
                properties.message_id, queue, dropped)  # fmt: skip
    minimal = pika.BasicProperties(
        message_id=properties.message_id if isinstance(properties.message_id, str) else None,
        headers={RETRIES_HEADER: retries_so_far(properties)},
    )
    return publish_failure(channel, topology, queue, minimal, body,
                           f"{reason} (the sender's headers were dropped: {dropped})", retryable=retryable)  # fmt: skip
