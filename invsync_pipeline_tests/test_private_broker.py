"""A private broker node stops and starts again with its data: the ground for outage tests."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _drain(url: str, queue: str, expected: int, seconds: float = 30) -> list[bytes]:
    """Consume and ack up to ``expected`` bodies (a quorum queue may need a moment after a start)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        bodies: list[bytes] = []
        deadline = time.monotonic() + seconds
        while len(bodies) < expected and time.monotonic() < deadline:
            method, _, body = channel.basic_get(queue)
            if method is None:
                time.sleep(0.1)
                continue
            bodies.append(body)
            channel.basic_ack(method.delivery_tag)
        return bodies
    finally:
        conn.close()


def test_persistent_messages_survive_a_stop_and_start_of_the_node(private_broker):
    conn = pika.BlockingConnection(pika.URLParameters(private_broker.url))
    channel = conn.channel()
    channel.confirm_delivery()
    sent = {"classic": [f"c{i}".encode() for i in range(20)], "quorum": [f"q{i}".encode() for i in range(20)]}
    for queue_type, bodies in sent.items():
        channel.queue_declare(f"outage.{queue_type}", durable=True, arguments={"x-queue-type": queue_type})
        for body in bodies:  # each publish returns once the broker confirmed it
            channel.basic_publish("", f"outage.{queue_type}", body, pika.BasicProperties(delivery_mode=2),
                                  mandatory=True)  # fmt: skip

    private_broker.stop()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        conn.process_data_events(time_limit=5)  # the client sees the broker close its connection
    assert not private_broker.is_running()

    private_broker.start()
    for queue_type, bodies in sent.items():
        assert _drain(private_broker.url, f"outage.{queue_type}", len(bodies)) == bodies
