"""Opening broker connections from settings, with errors that say how to get a broker."""

from __future__ import annotations

import pika
import pika.exceptions

from invsync_pipeline.messaging import amqp_headers
from invsync_pipeline.settings import Settings


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached; the message names the URL (without the password)."""


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and errors."""
    params = pika.URLParameters(url)
    user = params.credentials.username if params.credentials else ""
    return f"amqp://{user}@{params.host}:{params.port}/{params.virtual_host}"


def connection_parameters(settings: Settings, **overrides: object) -> pika.URLParameters:
    params = pika.URLParameters(settings.amqp_url)
    # Fail fast when the broker is down: callers decide whether to buffer or to retry.
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 60
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def connect(settings: Settings, **overrides: object) -> pika.BlockingConnection:
    """A blocking connection, or BrokerUnavailable with what to do about it."""
    amqp_headers.install()  # no sender's header can drop the connection (amqp_headers.py)
    try:
        return pika.BlockingConnection(connection_parameters(settings, **overrides))
    except pika.exceptions.AMQPConnectionError as exc:
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {redact(settings.amqp_url)} ({exc!r}). Start it with "
            "`rabbitmq-server -detached`, or point INVSYNC_AMQP_URL at a running broker."
        ) from exc
