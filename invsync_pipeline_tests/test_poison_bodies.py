"""Bodies and headers that once stopped the line (issue 11, invariant 3), through every consumer.

Each poison body is quarantined or parked whole with its reason by the drain, the sensor, the
worker, the MES, the DLQ tools and the CLI; the valid messages around it flow on; nothing dies.
All on the real broker, the reference MES and real files.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pika
import pika.data
import pytest
import requests
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import PUBLISHED_MS_HEADER
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.retry import FAILED_QUEUE_HEADER, REASON_HEADER, RETRIES_HEADER
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.resources import InvsyncResource
from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline_tests.factories import event, queue_depth

pytestmark = pytest.mark.broker

TOKEN = "poison-token"
ROUTING_KEY = "inventory.wh01.raw.receipt"
# A closed hour two hours back: valid events land in it, and the sensor may ask for it.
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def _good(**changes) -> dict:
    return event(timestamp=(HOUR + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"), **changes)


def _splice(base: dict, field: str, raw_json: str) -> bytes:
    """``base`` as JSON with ``field`` set to raw JSON text (what json.dumps would never write)."""
    fields = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in base.items() if k != field]
    return ("{" + ", ".join([*fields, f"{json.dumps(field)}: {raw_json}"]) + "}").encode()


# name -> (body, the field its reason names). Each stopped the line before issue 11.
POISON = {
    "nested-1000-deep": (_splice(_good(transaction_id="P-DEEP"), "note", "[" * 1000 + "]" * 1000), "body"),
    "quantity-5000-digits": (_splice(_good(transaction_id="P-DIGITS"), "quantity", "1" * 5000), "quantity"),
    "utc-before-year-1": (
        _splice(_good(transaction_id="P-YEAR-1"), "timestamp", '"0001-01-01T00:00:00+01:00"'),
        "timestamp",
    ),  # fmt: skip
    "utc-after-year-9999": (
        _splice(_good(transaction_id="P-YEAR-9999"), "timestamp", '"9999-12-31T23:59:59-01:00"'),
        "timestamp",
    ),  # fmt: skip
}


def _mixed() -> tuple[list[dict], list[bytes]]:
    """Valid events with a poison body between every two: (the valid ones, all bodies in order)."""
    good = [_good() for _ in range(len(POISON) + 1)]
    bodies = [json.dumps(good[0]).encode()]
    for (body, _), following in zip(POISON.values(), good[1:], strict=True):
        bodies += [body, json.dumps(following).encode()]
    return good, bodies


def _publish(connection, exchange: str, bodies: list[bytes], routing_key: str = ROUTING_KEY, **props) -> None:
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(delivery_mode=2, **props),
                              mandatory=True)  # fmt: skip
    channel.close()


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _take_all(connection, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    channel = connection.channel()
    taken = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        taken.append((props, body))
    channel.close()
    return taken


def _field_of(reason: str) -> str:
    return reason.removeprefix("invalid: ").split("=", 1)[0]


# --- headers other clients send and RabbitMQ passes on, but pika will not encode ----------------


class _Timestamp(int):
    """An AMQP timestamp header in seconds, beyond what Python's datetime holds."""


def _nested(depth: int) -> dict:
    table: dict = {"leaf": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


@contextlib.contextmanager
def _unchecked_encoding():
    """Let pika encode what another client would: out-of-range timestamps, very deep tables."""
    original, limit = pika.data.encode_value, sys.getrecursionlimit()

    def encode(pieces, value):
        if isinstance(value, _Timestamp):
            pieces.append(struct.pack(">cQ", b"T", int(value)))
            return 9
        return original(pieces, value)

    pika.data.encode_value = encode
    sys.setrecursionlimit(30_000)
    try:
        yield
    finally:
        pika.data.encode_value = original
        sys.setrecursionlimit(limit)


def _publish_hostile(connection, exchange: str, bodies: list[bytes], routing_key: str = ROUTING_KEY) -> None:
    with _unchecked_encoding():
        _publish(connection, exchange, bodies, routing_key, message_id="id with spaces, ü and \x07",
                 timestamp=2**62, headers=HOSTILE_HEADERS)  # fmt: skip


HOSTILE_HEADERS = {
    "bytes": b"\xff\xfe not UTF-8",
    "decimal": Decimal("1.5"),
    "when": datetime(2026, 1, 1, tzinfo=UTC),
    "year-292-billion": _Timestamp(2**63),
    "nested-3000-deep": _nested(3000),
    "list": [1, "two", [3, [4]]],
    "none": None,
    RETRIES_HEADER: "lots",
    PUBLISHED_MS_HEADER: "not a number",
}


# --- the drain and the sensor --------------------------------------------------------------------


def test_the_drain_quarantines_each_poison_body_whole_and_stages_every_valid_one(settings, topology, connection):
    good, bodies = _mixed()
    _publish(connection, topology.exchange, bodies)

    result = drain_ledger_tap(settings)

    assert (result.staged, result.quarantined) == (len(good), len(POISON))
    assert queue_depth(connection, topology.ledger_tap) == 0
    rows = StagedEventLog(settings.staged_dir).quarantined()
    by_body = {base64.b64decode(r["body_b64"]): r for r in rows}
    for name, (body, field) in POISON.items():
        assert by_body[body]["field"] == field, name  # kept whole, with the field that broke
        assert by_body[body]["rule"], name


def test_a_sensor_tick_with_poison_bodies_asks_for_the_good_hour_and_waits_for_no_hour(settings, topology, connection):
    _, bodies = _mixed()
    _publish(connection, topology.exchange, bodies)
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"invsync": InvsyncResource()})

    result = ledger_tap_sensor(context)

    assert [r.partition_key for r in result.run_requests] == [HOUR.strftime("%Y-%m-%d-%H:00")]
    assert json.loads(result.cursor)["waiting"] == {}  # no year-9999 hour waiting forever
    assert len(StagedEventLog(settings.staged_dir).quarantined()) == len(POISON)


def test_hostile_headers_neither_stop_the_drain_nor_the_quarantine(settings, topology, connection):
    valid = _good()
    _publish_hostile(connection, topology.exchange, [json.dumps(valid).encode(), POISON["quantity-5000-digits"][0]],
                     routing_key="inventory.wh 01.r\u00e4w.\x07")  # fmt: skip

    result = drain_ledger_tap(settings)

    assert (result.staged, result.quarantined) == (1, 1)
    [row] = StagedEventLog(settings.staged_dir).quarantined()
    assert row["field"] == "quantity" and row["routing_key"] == "inventory.wh 01.r\u00e4w.\x07"
    headers = row["headers"]
    assert headers["bytes"] == b"\xff\xfe not UTF-8".decode("utf-8", "replace")
    assert headers["decimal"] == "1.5" and headers["year-292-billion"] == 2**63
    assert "nested deeper than" in json.dumps(headers["nested-3000-deep"])
    listed = CliRunner().invoke(main, ["staged", "quarantine", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["field"] == "quantity"


def test_a_drain_error_on_one_tick_never_fails_the_tick(settings, topology, connection):
    # Segments of a closed hour are already on disk; the drain then cannot write the next one.
    staged_log = StagedEventLog(settings.staged_dir)
    earlier = HOUR - timedelta(hours=1)
    staged_log.write_events({earlier.strftime("%Y-%m-%d-%H:00"): [json.dumps(_good())]}, "0001-on-disk")
    blocked = staged_log.events_dir / HOUR.strftime("%Y-%m-%dT%H")
    blocked.write_text("a file where the drain wants a folder")
    _publish(connection, topology.exchange, [json.dumps(_good()).encode()])
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"invsync": InvsyncResource()})

    result = ledger_tap_sensor(context)

    assert [r.partition_key for r in result.run_requests] == [earlier.strftime("%Y-%m-%d-%H:00")]
    _wait(lambda: queue_depth(connection, topology.ledger_tap) == 1, timeout=10, what="the message back unacked")
    blocked.unlink()
    assert drain_ledger_tap(settings).staged == 1


# --- the worker, the MES and the DLQ tools ------------------------------------------------------


@pytest.fixture
def mes(tmp_path, monkeypatch):
    running = run_in_thread(tmp_path / "mes.sqlite", TOKEN)
    monkeypatch.setenv("INVSYNC_MES_URL", running.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    yield running
    running.stop()


@pytest.fixture
def worker(settings, topology, mes):
    running = SyncWorker(settings, ReferenceMesClient(mes.url, TOKEN, timeout_seconds=5))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    assert thread.is_alive(), "the worker died"
    running.stop()
    thread.join(15)
    assert not thread.is_alive()


def _applied(mes) -> set[str]:
    return {
        r["transaction_id"]
        for r in ReferenceMesClient(mes.url, TOKEN).applied_transactions()
        if r["status"] == "applied"
    }


def test_the_worker_parks_each_poison_body_whole_and_applies_every_valid_one(
    settings, topology, connection, mes, worker
):
    good, bodies = _mixed()
    _publish(connection, topology.exchange, bodies)

    _wait(lambda: worker.stats.applied == len(good) and worker.stats.parked == len(POISON), what="applied + parked")

    assert _applied(mes) == {e["transaction_id"] for e in good}
    parked = {body: props for props, body in _take_all(connection, topology.parking)}
    for name, (body, field) in POISON.items():
        reason = parked[body].headers[REASON_HEADER]
        assert reason.startswith("invalid: ") and _field_of(reason) == field, name


def test_the_worker_survives_hostile_headers_on_valid_and_invalid_messages(settings, topology, connection, mes, worker):
    valid, after = _good(), _good()
    kept = {k: v for k, v in HOSTILE_HEADERS.items() if k != "year-292-billion"}
    with _unchecked_encoding():
        # Read fine, and published again fine with the failure copy.
        _publish(connection, topology.exchange, [json.dumps(valid).encode(), POISON["utc-before-year-1"][0]],
                 headers=kept)  # fmt: skip
        # Read fine (as raw seconds), but pika cannot encode it again: dropped from the copy.
        _publish(connection, topology.exchange, [POISON["quantity-5000-digits"][0]],
                 headers={"year-292-billion": _Timestamp(2**63)})  # fmt: skip
    # Fits a frame, but not once the reason is added: dropped from the copy too.
    _publish(connection, topology.exchange, [POISON["nested-1000-deep"][0]], headers={"big": "x" * 120_000})
    _publish(connection, topology.exchange, [json.dumps(after).encode()])

    _wait(lambda: worker.stats.applied == 2 and worker.stats.parked == 3, what="2 applied + 3 parked")

    assert _applied(mes) == {valid["transaction_id"], after["transaction_id"]}
    parked = {body: props.headers for props, body in _take_all(connection, topology.parking)}
    hostile = parked[POISON["utc-before-year-1"][0]]
    assert _field_of(hostile[REASON_HEADER]) == "timestamp" and hostile["decimal"] == Decimal("1.5")
    for name, header in (("quantity-5000-digits", "year-292-billion"), ("nested-1000-deep", "big")):
        headers = parked[POISON[name][0]]
        assert header not in headers and "the sender's headers were dropped" in headers[REASON_HEADER], name
        assert _field_of(headers[REASON_HEADER]) == POISON[name][1], name
        assert headers[FAILED_QUEUE_HEADER] == settings.name("plant.wh01.raw")


@pytest.mark.parametrize("name", list(POISON))
def test_the_mes_answers_422_with_field_value_and_rule_never_500(mes, name):
    body, field = POISON[name]
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    answer = requests.post(f"{mes.url}/api/v1/inventory/transactions", data=body, headers=auth, timeout=10)

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and answer.json()["rule"] and "value" in answer.json()
    good = requests.post(f"{mes.url}/api/v1/inventory/transactions", data=json.dumps(_good()), headers=auth,
                         timeout=10)  # fmt: skip
    assert good.status_code == 201, good.text


@pytest.mark.parametrize("raw", [b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"quantity": ' + b"1" * 5000 + b"}"])
def test_a_backflush_body_that_cannot_be_read_is_a_422_too(mes, raw):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    answer = requests.post(f"{mes.url}/api/v1/production/backflush", data=raw, headers=auth, timeout=10)

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "body"


def test_dlq_list_show_replay_and_discard_keep_poison_parked_and_replay_the_rest(
    settings, topology, connection, mes, worker
):
    good, bodies = _mixed()
    _publish(connection, topology.exchange, bodies)
    _wait(lambda: worker.stats.parked == len(POISON), what="poison parked")
    # A valid event parked while the MES was down, beside them, with hostile headers.
    stranded = _good()
    with _unchecked_encoding():
        _publish(connection, topology.dead_letter_exchange, [json.dumps(stranded).encode()], routing_key="x",
                 message_id=stranded["transaction_id"],
                 headers={**HOSTILE_HEADERS, REASON_HEADER: "MES unavailable: test",
                          FAILED_QUEUE_HEADER: settings.name("plant.wh01.raw")})  # fmt: skip
    runner = CliRunner()

    listed = runner.invoke(main, ["dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert len(rows) == len(POISON) + 1 and all(r["reason"] for r in rows)
    assert runner.invoke(main, ["dlq", "list"]).exit_code == 0
    assert runner.invoke(main, ["dlq", "list", "--since", "2020-01-01"]).exit_code == 0
    shown = runner.invoke(main, ["dlq", "show", stranded["transaction_id"]])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["headers"]["decimal"] == "1.5"

    replayed = runner.invoke(main, ["dlq", "replay", "--all", "--by", "test"])

    assert replayed.exit_code == 1, replayed.output  # some were refused: they stay parked
    assert replayed.output.count("refused ") == len(POISON)
    assert f"replayed {stranded['transaction_id']}" in replayed.output
    _wait(lambda: stranded["transaction_id"] in _applied(mes), what="the replayed event applied")
    assert queue_depth(connection, topology.parking) == len(POISON)
    discarded = runner.invoke(main, ["dlq", "discard", "--reason", "invalid", "--note", "poison", "--by", "test"])
    assert discarded.exit_code == 0, discarded.output
    assert queue_depth(connection, topology.parking) == 0


# --- the CLI on files ---------------------------------------------------------------------------


def test_contract_validate_names_each_poison_line_and_goes_on(settings, tmp_path):
    good, bodies = _mixed()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n")

    result = CliRunner().invoke(main, ["contract", "validate", str(path)])

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    bad_lines = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert [line.split(": ", 1)[1].split("=", 1)[0] for line in bad_lines] == [f for _, f in POISON.values()]
    assert result.output.splitlines()[-1] == f"{len(good)} valid, {len(POISON)} invalid"


def test_publish_refuses_a_file_with_poison_lines_or_publishes_the_valid_ones(settings, topology, connection, tmp_path):
    good, bodies = _mixed()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    runner = CliRunner()

    refused = runner.invoke(main, ["publish", str(path)])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused.output
    assert queue_depth(connection, topology.ledger_tap) == 0

    published = runner.invoke(main, ["publish", str(path), "--skip-invalid"])
    assert published.exit_code == 0, published.output
    assert f"{len(good)} enqueued" in published.output
    _wait(lambda: queue_depth(connection, topology.ledger_tap) == len(good), what="valid lines published")
