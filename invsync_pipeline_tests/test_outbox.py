"""The outbox publisher on the real broker: durable buffering, confirmed in-order delivery, loud refusals."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pika
import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.messaging.connection import BrokerUnavailable
from invsync_pipeline.messaging.outbox import (
    ExchangeMissing,
    FlushLock,
    Outbox,
    OutboxBusy,
    OutboxFull,
    UnroutableEvents,
)
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings
from invsync_pipeline_tests.factories import event, queue_depth

pytestmark = pytest.mark.broker

CLOSED_PORT_URL = "amqp://127.0.0.1:1/%2F"


def _events(n: int, **overrides) -> list[InventoryEvent]:
    return [parse_event(event(**overrides)) for _ in range(n)]


def _unreachable(settings: Settings) -> Settings:
    """The same home (so the same outbox file) but a broker URL nobody listens on."""
    return settings.model_copy(update={"amqp_url": CLOSED_PORT_URL})


def _take_all(connection: pika.BlockingConnection, queue: str) -> list[tuple[pika.spec.Basic.GetOk, object, bytes]]:
    """Everything in the queue, in queue order (confirmed publishes are already enqueued)."""
    channel = connection.channel()
    got = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((method, props, body))
    channel.close()
    return got


def _ids(messages) -> list[str]:
    return [json.loads(body)["transaction_id"] for _m, _p, body in messages]


def _first_seen(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def test_published_events_arrive_once_each_in_order_with_the_contract_properties(settings, topology, connection):
    events = _events(300)
    before = int(time.time())

    with Outbox(settings) as outbox:
        result = outbox.publish(events)
        assert outbox.pending_count() == 0

    assert (result.enqueued.accepted, result.published, result.pending, result.broker_error) == (300, 300, 0, None)
    messages = _take_all(connection, topology.ledger_tap)
    assert _ids(messages) == [e.transaction_id for e in events]
    for (method, props, body), sent in zip(messages, events, strict=True):
        assert method.routing_key == sent.routing_key == "inventory.wh01.raw.receipt"
        assert body == sent.to_body()
        assert props.delivery_mode == 2
        assert props.content_type == "application/json"
        assert props.message_id == sent.transaction_id
        assert before <= props.timestamp <= time.time() + 1


def test_events_buffer_while_the_broker_is_unreachable_survive_a_reopen_and_then_arrive_in_order(
    settings, topology, connection
):
    events = _events(250)
    with Outbox(_unreachable(settings)) as outbox:
        result = outbox.publish(events)
        with pytest.raises(BrokerUnavailable, match="cannot reach RabbitMQ"):
            outbox.flush()
    assert (result.published, result.pending) == (0, 250)
    assert "cannot reach RabbitMQ" in result.broker_error and "stay buffered" in result.broker_error

    with Outbox(settings) as reopened:  # a new process after a restart, broker back
        assert reopened.pending_count() == 250
        flushed = reopened.flush()

    assert (flushed.published, flushed.pending) == (250, 0)
    assert _ids(_take_all(connection, topology.ledger_tap)) == [e.transaction_id for e in events]


def test_a_connection_lost_mid_flush_loses_nothing_and_keeps_the_order_of_first_delivery(
    settings, topology, connection
):
    events = _events(3000)
    with _CuttingProxy(cut_after_bytes=800_000) as proxy, Outbox(settings) as outbox:
        outbox.enqueue(events)
        via_proxy = settings.model_copy(update={"amqp_url": f"amqp://127.0.0.1:{proxy.port}/%2F"})
        with Outbox(via_proxy) as cut, pytest.raises(BrokerUnavailable, match="lost the connection") as lost:
            cut.flush()
        assert proxy.cut
        assert 0 < lost.value.result.pending < 3000
        assert lost.value.result.published + lost.value.result.pending == 3000

        assert outbox.flush().pending == 0

    delivered = _ids(_take_all(connection, topology.ledger_tap))
    # Publishes in flight at the cut may arrive twice (consumers dedupe by transaction_id).
    assert _first_seen(delivered) == [e.transaction_id for e in events]


def test_a_flush_out_of_time_keeps_the_rest_for_the_next_flush_in_order(settings, topology, connection):
    events = _events(5000)
    with Outbox(settings) as outbox:
        outbox.enqueue(events)
        partial = outbox.flush(max_seconds=0.02)
        assert partial.stopped_because == "time budget"
        assert partial.pending == 5000 - partial.published > 0
        assert outbox.flush().pending == 0

    assert _ids(_take_all(connection, topology.ledger_tap)) == [e.transaction_id for e in events]


def test_only_one_flush_at_a_time_runs_on_an_outbox_file(settings, topology):
    with Outbox(settings) as first, Outbox(settings) as second:
        first.enqueue(_events(3))
        with FlushLock(first.path.with_name(first.path.name + ".flush-lock")):  # a flush in progress
            with pytest.raises(OutboxBusy, match="would break the publish order"):
                second.flush()
            assert second.publish(_events(1)).broker_error.startswith("another process is flushing")
        assert second.flush().published == 4


def test_a_full_outbox_refuses_the_whole_call_loudly_and_keeps_what_it_had(settings):
    small = _unreachable(settings).model_copy(
        update={"outbox": settings.outbox.model_copy(update={"capacity_events": 5})}
    )
    kept, refused = _events(3), _events(3)
    with Outbox(small) as outbox:
        outbox.enqueue(kept)
        with pytest.raises(OutboxFull) as full:
            outbox.enqueue(refused)
        assert outbox.pending_count() == 3
        buffered = {r[0] for r in outbox.db.execute("SELECT transaction_id FROM outbox")}

    assert buffered == {e.transaction_id for e in kept}
    message = str(full.value)
    assert "3 events buffered" in message and "capacity 5" in message
    assert "outbox.capacity_events" in message and "Nothing of this call was accepted" in message


def test_enqueueing_a_transaction_id_again_is_a_reported_no_op(settings):
    a, b, c = _events(3)
    with Outbox(_unreachable(settings)) as outbox:
        first = outbox.enqueue([a, b])
        again = outbox.enqueue([b, c, c])

        assert (first.accepted, first.duplicates) == (2, ())
        assert (again.accepted, again.duplicates, again.pending) == (1, (b.transaction_id, c.transaction_id), 3)
        assert outbox.pending_count() == 3


def test_unroutable_events_stay_buffered_and_the_error_names_the_routing_key(settings, connection):
    exchange = build_topology(settings).exchange
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)  # the exchange, but no bindings
    try:
        with Outbox(settings) as outbox:
            outbox.enqueue(_events(20, location="WH07/RM01", material_type="packaging"))
            with pytest.raises(UnroutableEvents) as unroutable:
                outbox.flush()
            assert outbox.pending_count() == 20
    finally:
        channel.exchange_delete(exchange)
    message = str(unroutable.value)
    assert "inventory.wh07.packaging.receipt" in message and "invsync topology apply" in message
    assert unroutable.value.result.published == 0


def test_without_the_exchange_events_stay_buffered_and_the_error_says_to_apply_the_topology(settings):
    with Outbox(settings) as outbox:
        outbox.enqueue(_events(10))
        with pytest.raises(ExchangeMissing, match="invsync topology apply"):
            outbox.flush()
        assert outbox.pending_count() == 10


def test_flushing_until_empty_retries_with_backoff_and_gives_up_at_the_timeout(settings):
    retries = []
    with Outbox(_unreachable(settings)) as outbox:
        outbox.enqueue(_events(5))
        result = outbox.flush_until_empty(timeout=1.2, on_retry=lambda exc, wait: retries.append(wait))

    assert result.pending == 5 and result.published == 0
    assert "timeout" in result.stopped_because
    assert len(retries) >= 2 and retries[1] > retries[0]


def test_an_empty_outbox_flushes_without_a_broker(settings):
    with Outbox(_unreachable(settings)) as outbox:
        assert outbox.flush().stopped_because == "empty"


def test_cli_publish_reports_the_bad_line_and_enqueues_nothing_unless_told_to_skip_it(
    settings, topology, connection, tmp_path
):
    good = [event(), event()]
    path = tmp_path / "moves.jsonl"
    path.write_text(f"{json.dumps(good[0])}\n{json.dumps(event(unit='kg'))}\n\n{json.dumps(good[1])}\n")
    runner = CliRunner()

    refused = runner.invoke(main, ["publish", str(path)])

    assert refused.exit_code == 1
    assert "line 2: unit='kg'" in refused.output and "nothing of" in refused.output
    with Outbox(settings) as outbox:
        assert outbox.pending_count() == 0

    published = runner.invoke(main, ["publish", "--skip-invalid", str(path)])

    assert published.exit_code == 0, published.output
    assert "2 enqueued" in published.output and "2 published, 0 buffered" in published.output
    assert _ids(_take_all(connection, topology.ledger_tap)) == [e["transaction_id"] for e in good]
    status = runner.invoke(main, ["outbox", "status", "--json"])
    assert json.loads(status.output)["pending"] == 0


class _CuttingProxy:
    """A TCP relay to the broker that drops both sides after N bytes from the client: a network cut."""

    def __init__(self, cut_after_bytes: int, upstream: tuple[str, int] = ("127.0.0.1", 5672)):
        self.cut_after = cut_after_bytes
        self.upstream = upstream
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> _CuttingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self._drop()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(self.upstream)
        self._sockets += [client, server]
        threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                sent += len(data) if counted else 0
                if sent >= self.cut_after:
                    self.cut = True
                    self._drop()
                    return
        except OSError:
            pass
        self._drop()

    def _drop(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_the_relay_publishes_events_enqueued_while_it_runs_and_stops_when_asked(settings, topology, connection):
    stop = threading.Event()
    results = []
    relay = threading.Thread(target=lambda: results.append(Outbox(settings).relay(stop, poll_seconds=0.01)))
    relay.start()
    with Outbox(settings) as box:
        for _ in range(5):
            box.enqueue([parse_event(event()) for _ in range(40)])
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while box.pending_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert box.pending_count() == 0
    stop.set()
    relay.join(10)

    assert not relay.is_alive()
    assert results[0].published == 200
    assert queue_depth(connection, topology.ledger_tap) == 200
