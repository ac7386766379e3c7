"""Opening broker connections from settings, with errors that say how to get a broker.

``amqp_url`` may name several nodes of a cluster, comma-separated. A connection goes to the
first node that answers, in that order; a client whose connection is lost connects again the
same way, so it lands on a surviving node (the worker, the drain, the outbox relay and the CLI
all reconnect through here).
"""

from __future__ import annotations

import pika
import pika.exceptions

from invsync_pipeline.messaging import amqp_headers
from invsync_pipeline.settings import Settings


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached; the message names the URL (without the password)."""


def redact(url: str) -> str:
    """The URL (or comma-separated URLs) with any password replaced, for logs and errors."""
    shown = []
    for part in url.split(","):
        params = pika.URLParameters(part.strip())
        user = params.credentials.username if params.credentials else ""
        shown.append(f"amqp://{user}@{params.host}:{params.port}/{params.virtual_host}")
    return ",".join(shown)


def connection_parameters(settings: Settings, **overrides: object) -> list[pika.URLParameters]:
    """One set of parameters per node, in the order to try them."""
    nodes = []
    for url in settings.amqp_urls:
        params = pika.URLParameters(url)
        # Fail fast when a node is down: the next is tried, and when none answers the caller
        # decides whether to buffer or to retry.
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 60
        for key, value in overrides.items():
            setattr(params, key, value)
        nodes.append(params)
    return nodes


def connect(settings: Settings, **overrides: object) -> pika.BlockingConnection:
    """A blocking connection to the first node that answers, or BrokerUnavailable with what to do."""
    amqp_headers.install()  # no sender's header can drop the connection (amqp_headers.py)
    try:
        return pika.BlockingConnection(connection_parameters(settings, **overrides))
    except pika.exceptions.AMQPConnectionError as exc:
        nodes = "any of the nodes " if len(settings.amqp_urls) > 1 else ""
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {nodes}{redact(settings.amqp_url)} ({exc!r}). Start it with "
            "`rabbitmq-server -detached`, or point INVSYNC_AMQP_URL at a running broker."
        ) from exc
