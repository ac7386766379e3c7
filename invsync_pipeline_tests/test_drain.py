"""The drain from the ledger tap into the staged event log, on the real broker and real files."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event, publish_events, publish_raw, queue_depth

pytestmark = pytest.mark.broker

# Recent closed hours: older timestamps would fall outside the contract's horizon one day.
_NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HOURS = [(_NOW_HOUR - timedelta(hours=back)).strftime("%Y-%m-%dT%H") for back in (6, 5, 4)]


def _events(n: int) -> list[dict]:
    return [event(timestamp=f"{HOURS[i % 3]}:{i % 60:02d}:00Z", material_number=f"MAT-{i % 7}") for i in range(n)]


def _staged_rows(settings) -> list[dict]:
    staged_log = StagedEventLog(settings.staged_dir)
    rows = []
    for hour in HOURS:
        key = hour.replace("T", "-") + ":00"
        for path in staged_log.segments(key):
            rows.extend(json.loads(line) for line in path.read_text().splitlines())
    return rows


def _load_hours(settings) -> int:
    """Materialize staging + ledger for the three hours; return the number of loaded events."""
    resources = {"invsync": InvsyncResource(), "warehouse": WarehouseResource()}
    for hour in HOURS:
        result = dg.materialize([staged_inventory_events, transaction_ledger],
                                partition_key=hour.replace("T", "-") + ":00", resources=resources)  # fmt: skip
        assert result.success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        total, unique = conn.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM staging.inventory_events"
        ).fetchone()
    assert total == unique
    return total


def test_every_published_message_is_staged_once_and_the_tap_is_left_empty(settings, topology, connection):
    events = _events(600)
    publish_events(connection, topology.exchange, events)

    result = drain_ledger_tap(settings)

    assert result.staged == 600 and result.quarantined == 0
    assert sorted(r["transaction_id"] for r in _staged_rows(settings)) == sorted(e["transaction_id"] for e in events)
    assert queue_depth(connection, topology.ledger_tap) == 0
    assert _load_hours(settings) == 600


def test_batches_are_bounded_by_count(settings, topology, connection):
    publish_events(connection, topology.exchange, _events(250))
    small = settings.model_copy(update={"staging": settings.staging.model_copy(update={"batch_max_events": 100})})

    result = drain_ledger_tap(small)

    assert result.batches == 3 and result.staged == 250


def test_an_event_budget_leaves_the_rest_in_the_queue_unacked(settings, topology, connection):
    publish_events(connection, topology.exchange, _events(300))

    first = drain_ledger_tap(settings, max_events=120)
    assert first.staged == 120 and first.stopped_because == "event budget spent"
    # What the drain had prefetched but not staged goes back to the queue when its channel
    # closes; the broker does that on its own time, so look until it has (a busy machine: 1 s+).
    deadline = time.monotonic() + 30
    while queue_depth(connection, topology.ledger_tap) != 180 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue_depth(connection, topology.ledger_tap) == 180

    second = drain_ledger_tap(settings)
    assert second.staged == 180


def test_a_crash_between_writing_and_acking_loses_nothing_and_duplicates_nothing(settings, topology, connection):
    events = _events(300)
    publish_events(connection, topology.exchange, events)

    def crash(_paths):
        raise RuntimeError("power cut after fsync, before ack")

    with pytest.raises(RuntimeError):
        drain_ledger_tap(settings, after_write=crash)
    written_before_crash = len(_staged_rows(settings))
    assert written_before_crash > 0

    again = drain_ledger_tap(settings)

    assert again.staged == 300  # all were redelivered: none had been acked
    assert queue_depth(connection, topology.ledger_tap) == 0
    assert len(_staged_rows(settings)) == written_before_crash + 300  # copies on disk...
    assert _load_hours(settings) == 300  # ...but each event loaded once


def test_a_segments_parquet_twin_is_written_only_after_its_batch_is_acked(settings, topology, connection):
    publish_events(connection, topology.exchange, _events(60))
    twins_at_write = []

    def look(paths):  # the batch is durable here, and not acked yet
        twins_at_write.extend(p for p in paths if os.path.exists(p.removesuffix(".jsonl") + ".parquet"))

    drain_ledger_tap(settings, after_write=look)

    assert twins_at_write == []  # the ack never waits for a twin
    segments = [p for hour in HOURS for p in (settings.staged_dir / "events" / hour).glob("*.jsonl")]
    assert segments and all(p.with_suffix(".parquet").exists() for p in segments)


def test_a_killed_drain_process_loses_nothing_and_duplicates_nothing(settings, topology, connection):
    events = _events(400)
    publish_events(connection, topology.exchange, events)
    script = textwrap.dedent(
        """
        import os, signal
        from invsync_pipeline.settings import load_settings
        from invsync_pipeline.messaging.drain import drain_ledger_tap
        drain_ledger_tap(load_settings(), after_write=lambda _: os.kill(os.getpid(), signal.SIGKILL))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    assert len(_staged_rows(settings)) > 0  # the killed process had made its segment durable

    again = drain_ledger_tap(settings)

    assert again.staged == 400
    assert queue_depth(connection, topology.ledger_tap) == 0
    assert _load_hours(settings) == 400


class _Relay:
    """A TCP relay to the broker; ``cut()`` drops every connection open so far (a network cut),
    and new connections pass as before."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> _Relay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(src, dst), daemon=True).start()

    @staticmethod
    def _relay(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def cut(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets = []


def test_a_connection_lost_mid_drain_is_reconnected_counted_and_loses_nothing(settings, topology, connection):
    events = _events(300)
    publish_events(connection, topology.exchange, events)
    small = settings.staging.model_copy(update={"batch_max_events": 100})
    cuts: list[list[str]] = []

    def cut_before_the_first_ack(paths: list[str]) -> None:
        if not cuts:
            cuts.append(paths)
            relay.cut()

    with _Relay() as relay:
        via_relay = settings.model_copy(update={"staging": small, "amqp_url": f"amqp://127.0.0.1:{relay.port}/%2F"})
        result = drain_ledger_tap(via_relay, after_write=cut_before_the_first_ack)

    assert result.reconnects == 1 and "1 reconnects" in result.summary()
    assert result.stopped_because == "queue empty"
    assert queue_depth(connection, topology.ledger_tap) == 0
    assert result.staged == 400  # the first batch was written, not acked, and delivered again...
    assert {r["transaction_id"] for r in _staged_rows(settings)} == {e["transaction_id"] for e in events}
    assert _load_hours(settings) == 300  # ...and each event is loaded once


BAD_BODIES = {
    "not json": (b"this is not json", "body"),
    "empty": (b"", "body"),
    "not utf-8": (b'{"a": "\xff\xfe"}', "body"),
    "a list": (b"[1, 2]", "body"),
    "huge": (json.dumps(event(erp_reference="x" * 64, material_number="y" * 40) | {"pad": "z" * 200_000}).encode(),
             "body"),
    "wrong type": (json.dumps(event(quantity=True)).encode(), "quantity"),
    "missing field": (json.dumps(event(material_number=None)).encode(), "material_number"),
    "unknown enum": (json.dumps(event(material_type="steel")).encode(), "material_type"),
    "unknown field": (json.dumps(event() | {"colour": "red"}).encode(), "colour"),
}  # fmt: skip


def test_malformed_messages_are_quarantined_whole_with_their_reason_and_the_rest_flows_on(
    settings, topology, connection
):
    good = _events(50)
    bad = [("inventory.wh01.raw.receipt", body) for body, _ in BAD_BODIES.values()]
    publish_raw(connection, topology.exchange, bad)
    publish_events(connection, topology.exchange, good)

    result = drain_ledger_tap(settings)

    assert result.staged == 50 and result.quarantined == len(BAD_BODIES)
    assert queue_depth(connection, topology.ledger_tap) == 0
    quarantined = StagedEventLog(settings.staged_dir).quarantined()
    by_body = {base64.b64decode(row["body_b64"]): row for row in quarantined}
    for name, (body, field) in BAD_BODIES.items():
        row = by_body[body]  # kept whole, byte for byte
        assert row["field"] == field, name
        assert row["reason"].startswith(f"{field}="), name
        assert row["rule"], name
    assert _load_hours(settings) == 50
