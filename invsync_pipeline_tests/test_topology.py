"""The RabbitMQ topology on the real broker: routing, retry tiers, parking, re-apply, export.

Each test works in its own namespace (the ``settings`` fixture), so the queues it inspects hold
only what the test itself published.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import parse_event, routing_key
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.retry import (
    FAILED_QUEUE_HEADER,
    REASON_HEADER,
    RETRIES_HEADER,
    publish_failure,
)
from invsync_pipeline.messaging.topology import (
    Topology,
    TopologyConflict,
    apply_topology,
    build_topology,
    delete_topology,
    export_definitions,
)
from invsync_pipeline.settings import (
    MATERIAL_TYPES,
    TRANSACTION_TYPES,
    Settings,
    load_settings,
)
from invsync_pipeline_tests.factories import event as make_event

pytestmark = pytest.mark.broker


# --- helpers ----------------------------------------------------------------------------------


def confirming_channel(connection: pika.BlockingConnection):
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, topo: Topology, key: str, message_id: str, body: bytes = b"{}") -> None:
    props = pika.BasicProperties(message_id=message_id, delivery_mode=2, content_type="application/json")
    # mandatory + confirms: returns only once the broker has routed the message somewhere.
    channel.basic_publish(topo.exchange, key, body, properties=props, mandatory=True)


def message_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def drain(channel, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message that is in the queue now (acked)."""
    messages = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((props, body))


def wait_for_message(channel, queue: str, timeout: float = 5.0):
    """The next message of ``queue`` (not acked), waiting for a TTL to bring it back."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = channel.basic_get(queue)
        if method is not None:
            return method, props, body
        if time.monotonic() > deadline:
            pytest.fail(f"no message arrived in {queue} within {timeout} s")
        time.sleep(0.02)


def plant_queue_for(settings: Settings, warehouse: str, material_type: str, tx_type: str) -> str:
    """The one plant queue the config says carries this movement (independent of the bindings)."""
    plant = next(p for p in settings.topology.plants if p.warehouse == warehouse)
    matches = [
        q.name
        for q in plant.queues
        if ("*" in q.material_types or material_type in q.material_types) and tx_type in q.transaction_types
    ]
    assert len(matches) == 1, f"config gives {warehouse}/{material_type}/{tx_type} to {matches}"
    return settings.name(f"plant.{warehouse.lower()}.{matches[0]}")


@contextlib.contextmanager
def own_topology(**topology_changes) -> Iterator[tuple[Settings, Topology]]:
    """A topology with changed settings in a fresh namespace, deleted afterwards."""
    base = load_settings()
    settings = load_settings(
        namespace=f"test.{uuid.uuid4().hex[:10]}.",
        topology={**base.topology.model_dump(), **topology_changes},
    )
    try:
        yield settings, apply_topology(settings)
    finally:
        delete_topology(settings)


# --- applying ---------------------------------------------------------------------------------


def test_applying_twice_changes_nothing_and_keeps_queued_messages(settings, connection, topology):
    channel = confirming_channel(connection)
    publish(channel, topology, "inventory.wh01.raw.receipt", "kept")

    again = apply_topology(settings, connection)

    assert again == topology
    raw_queue = settings.name("plant.wh01.raw")
    counts = {q.name: message_count(channel, q.name) for q in topology.queues}
    assert counts == {q.name: (1 if q.name in (raw_queue, topology.ledger_tap) else 0) for q in topology.queues}
    assert [props.message_id for props, _ in drain(channel, raw_queue)] == ["kept"]


def test_every_routing_key_reaches_exactly_its_plant_queue_and_the_ledger_tap(settings, connection, topology):
    channel = confirming_channel(connection)
    expected: dict[str, set[str]] = {q.name: set() for q in topology.queues}
    for plant in settings.topology.plants:
        for material_type in MATERIAL_TYPES:
            for tx_type in TRANSACTION_TYPES:
                key = routing_key(plant.warehouse, material_type, tx_type)
                publish(channel, topology, key, message_id=key)
                expected[plant_queue_for(settings, plant.warehouse, material_type, tx_type)].add(key)
                expected[topology.ledger_tap].add(key)

    received = {q.name: {props.message_id for props, _ in drain(channel, q.name)} for q in topology.queues}

    assert received == expected
    assert len(expected[topology.ledger_tap]) == 2 * len(MATERIAL_TYPES) * len(TRANSACTION_TYPES)


def test_a_warehouse_without_a_plant_reaches_only_the_ledger_tap(connection, topology):
    channel = confirming_channel(connection)
    for tx_type in TRANSACTION_TYPES:
        publish(channel, topology, routing_key("WH99", "raw", tx_type), message_id=tx_type)

    received = {q.name: {props.message_id for props, _ in drain(channel, q.name)} for q in topology.queues}

    assert received[topology.ledger_tap] == set(TRANSACTION_TYPES)
    assert all(not ids for name, ids in received.items() if name != topology.ledger_tap)


# --- retry and parking ------------------------------------------------------------------------


def test_a_message_that_always_fails_walks_retry_1_2_3_back_to_its_queue_then_parks(settings, connection, topology):
    channel = confirming_channel(connection)
    event = parse_event(json.dumps(make_event()))
    work_queue = settings.name("plant.wh01.raw")
    publish(channel, topology, event.routing_key, event.transaction_id, event.to_body())

    seen_tiers, destinations = [], []
    failed_at = time.monotonic()
    for attempt in range(4):
        # Generous: a busy machine may take long to bring it back, never less than the delay.
        method, props, body = wait_for_message(channel, work_queue, timeout=60)
        headers = props.headers or {}
        seen_tiers.append(headers.get(RETRIES_HEADER))
        if attempt:
            # Back after the delay of the tier it waited in, and from that tier's queue. Measured
            # from before the publish (the cause), so slow confirms only make it look longer.
            delay_s = settings.topology.retry_delays_ms[attempt - 1] / 1000
            assert time.monotonic() - failed_at >= delay_s - 0.01  # the broker counts TTLs in whole ms
            assert headers["x-death"][0]["queue"] == topology.retry_queues[attempt - 1]
            assert headers["x-death"][0]["reason"] == "expired"
        assert props.message_id == event.transaction_id
        assert body == event.to_body()
        failed_at = time.monotonic()
        route = publish_failure(channel, topology, work_queue, props, body, f"MES said 503 (attempt {attempt + 1})")
        channel.basic_ack(method.delivery_tag)
        destinations.append(route.destination)

    assert seen_tiers == [None, 1, 2, 3]
    assert destinations == ["retry.1", "retry.2", "retry.3", "parking"]
    _, parked_props, parked_body = wait_for_message(channel, topology.parking, timeout=60)
    assert parked_body == event.to_body()
    assert parked_props.message_id == event.transaction_id
    assert parked_props.delivery_mode == 2
    assert parked_props.headers[REASON_HEADER] == "MES said 503 (attempt 4)"
    assert parked_props.headers[RETRIES_HEADER] == 3
    assert parked_props.headers[FAILED_QUEUE_HEADER] == work_queue
    # Retries went back to the one queue that failed the message: the tap saw it once, and
    # nothing is left anywhere else (the parked copy is the one this test holds unacked).
    counts = {q.name: message_count(channel, q.name) for q in topology.queues}
    assert counts == {q.name: int(q.name == topology.ledger_tap) for q in topology.queues}


def test_an_invalid_message_goes_straight_to_parking_with_its_reason(settings, connection, topology):
    channel = confirming_channel(connection)
    work_queue = settings.name("plant.wh02.finished")
    publish(channel, topology, "inventory.wh02.finished.issue", "bad-1", b'{"quantity": "lots"}')
    method, props, body = wait_for_message(channel, work_queue)

    route = publish_failure(
        channel, topology, work_queue, props, body, "quantity='lots': must be a decimal number",
        retryable=False,
    )  # fmt: skip
    channel.basic_ack(method.delivery_tag)

    assert route.destination == "parking"
    assert all(message_count(channel, q) == 0 for q in topology.retry_queues)
    [(parked_props, parked_body)] = drain(channel, topology.parking)
    assert parked_body == b'{"quantity": "lots"}'
    assert parked_props.message_id == "bad-1"
    assert parked_props.headers[REASON_HEADER] == "quantity='lots': must be a decimal number"
    assert parked_props.headers[FAILED_QUEUE_HEADER] == work_queue
    assert RETRIES_HEADER not in parked_props.headers


def test_a_message_whose_ttl_expires_is_parked_not_dropped():
    with own_topology(message_ttl_ms=100) as (settings, topo):
        conn = connect(settings)
        try:
            channel = confirming_channel(conn)
            publish(channel, topo, "inventory.wh01.mro.receipt", "stale")

            deadline = time.monotonic() + 5
            while message_count(channel, topo.parking) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            parked = drain(channel, topo.parking)
        finally:
            conn.close()

    # Both copies expire: the plant queue's and the ledger tap's.
    deaths = {(p.message_id, p.headers["x-death"][0]["queue"]) for p, _ in parked}
    assert deaths == {("stale", settings.name("plant.wh01.other")), ("stale", topo.ledger_tap)}
    assert {p.headers["x-death"][0]["reason"] for p, _ in parked} == {"expired"}


def test_quorum_queues_apply_cleanly_and_retry_through_the_same_path():
    with own_topology(queue_type="quorum", retry_delays_ms=[200, 400, 600]) as (settings, topo):
        apply_topology(settings)  # and again: still harmless with quorum queues
        conn = connect(settings)
        try:
            channel = confirming_channel(conn)
            work_queue = settings.name("plant.wh02.noncritical")
            publish(channel, topo, "inventory.wh02.wip.cycle_count", "q-1")
            assert message_count(channel, topo.ledger_tap) == 1

            method, props, body = wait_for_message(channel, work_queue)
            publish_failure(channel, topo, work_queue, props, body, "MES timeout")
            channel.basic_ack(method.delivery_tag)
            method, props, body = wait_for_message(channel, work_queue)
            assert props.headers[RETRIES_HEADER] == 1
            publish_failure(channel, topo, work_queue, props, body, "bad", retryable=False)
            channel.basic_ack(method.delivery_tag)

            _, parked, _ = wait_for_message(channel, topo.parking)
            assert parked.headers[REASON_HEADER] == "bad"
            # A queue declared as quorum refuses to be declared classic: it really is quorum.
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
                args = next(q.arguments for q in topo.queues if q.name == work_queue)
                conn.channel().queue_declare(work_queue, durable=True, arguments={**args, "x-queue-type": "classic"})
        finally:
            conn.close()


def test_changing_a_queue_argument_and_applying_again_is_a_clear_conflict(settings, topology):
    changed = load_settings(topology={**settings.topology.model_dump(), "message_ttl_ms": 3_600_000})
    assert changed.namespace == settings.namespace

    with pytest.raises(TopologyConflict) as caught:
        apply_topology(changed)

    text = str(caught.value)
    assert repr(settings.name("plant.wh01.raw")) in text
    assert "x-message-ttl" in text
    assert "invsync topology delete" in text


# --- export -----------------------------------------------------------------------------------


def test_export_lists_every_queue_exchange_and_binding_that_apply_declares(settings, connection, topology):
    definitions = export_definitions(settings)

    assert json.loads(json.dumps(definitions)) == definitions
    assert definitions["vhosts"] == [{"name": "/"}]
    assert {(e["name"], e["type"]) for e in definitions["exchanges"]} == {(e.name, e.type) for e in topology.exchanges}
    assert {q["name"]: q["arguments"] for q in definitions["queues"]} == {q.name: q.arguments for q in topology.queues}
    exported_bindings = [
        (b["source"], b["destination"], b["routing_key"], b["arguments"]) for b in definitions["bindings"]
    ]
    assert sorted(map(str, exported_bindings)) == sorted(
        str((b.source, b.destination, b.routing_key, b.arguments)) for b in topology.bindings
    )
    assert all(item["durable"] for item in definitions["queues"] + definitions["exchanges"])
    # Everything exported exists on the broker after apply.
    channel = connection.channel()
    for exchange in definitions["exchanges"]:
        channel.exchange_declare(exchange["name"], passive=True)
    for queue in definitions["queues"]:
        channel.queue_declare(queue["name"], passive=True)


def _rabbitmqctl_unusable() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed here"
    try:
        ping = subprocess.run(["rabbitmqctl", "-q", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"rabbitmqctl cannot run: {exc}"
    if ping.returncode != 0:
        return f"rabbitmqctl cannot reach the local node: {ping.stderr.strip() or ping.stdout.strip()}"
    return None


def _wait_until_declared(settings: Settings, topo: Topology, timeout: float = 15.0) -> None:
    # import_definitions returns before the import is done ("asynchronous").
    deadline = time.monotonic() + timeout
    conn = connect(settings)
    try:
        for queue in topo.queues:
            while True:
                try:
                    conn.channel().queue_declare(queue.name, passive=True)
                    break
                except pika.exceptions.ChannelClosedByBroker:
                    if time.monotonic() > deadline:
                        pytest.fail(f"{queue.name} did not appear within {timeout} s of the import")
                    time.sleep(0.1)
    finally:
        conn.close()


def test_the_exported_file_imports_into_rabbitmq_and_routes_like_apply(tmp_path, settings):
    # Nothing applied: the import alone must build the topology in the fixture's fresh namespace.
    # Exported by the CLI, so with the file's config (its retry delays, not the fixture's).
    cli_settings = load_settings()
    path = tmp_path / "definitions.json"
    result = CliRunner().invoke(main, ["topology", "export"])
    assert result.exit_code == 0, result.output
    path.write_text(result.output)
    topo = build_topology(cli_settings)
    if reason := _rabbitmqctl_unusable():
        pytest.skip(f"cannot check the import: {reason}")
    try:
        # Fed on stdin: rabbitmqctl opens a path as the rabbitmq user, who cannot read tmp_path.
        with path.open("rb") as definitions:
            done = subprocess.run(
                ["rabbitmqctl", "import_definitions", "--format", "json"],
                stdin=definitions, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr or done.stdout
        _wait_until_declared(cli_settings, topo)

        conn = connect(cli_settings)
        try:
            channel = confirming_channel(conn)
            publish(channel, topo, "inventory.wh02.finished.transfer", "imported")
            assert message_count(channel, cli_settings.name("plant.wh02.finished")) == 1
            assert message_count(channel, topo.ledger_tap) == 1
            # The headers bindings of the retry tiers came through: tier 2 reaches retry.2 only.
            _, props, body = wait_for_message(channel, cli_settings.name("plant.wh02.finished"))
            props.headers = {RETRIES_HEADER: 1}
            publish_failure(channel, topo, cli_settings.name("plant.wh02.finished"), props, body, "x")
            assert [message_count(channel, q) for q in topo.retry_queues] == [0, 1, 0]
        finally:
            conn.close()
        # apply agrees with what was imported: same arguments, so no conflict.
        assert apply_topology(cli_settings) == topo
    finally:
        delete_topology(cli_settings)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_topology_apply_declares_everything_and_can_run_again(settings):
    cli_settings = load_settings()  # what the command sees: the fixture's namespace, the file's config
    topo = build_topology(cli_settings)
    try:
        for _ in range(2):
            result = CliRunner().invoke(main, ["topology", "apply"])
            assert result.exit_code == 0, result.output
            assert result.output.strip() == (
                f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, {len(topo.bindings)} bindings"
            )
        conn = connect(cli_settings)
        try:
            channel = conn.channel()
            for queue in topo.queues:
                assert queue.name.startswith(settings.namespace)
                assert message_count(channel, queue.name) == 0
        finally:
            conn.close()
    finally:
        delete_topology(cli_settings)


def test_cli_topology_export_prints_the_definitions_json(settings):
    result = CliRunner().invoke(main, ["topology", "export"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == export_definitions(load_settings())
    assert all(q["name"].startswith(settings.namespace) for q in json.loads(result.output)["queues"])
