"""The MES sync worker against the reference MES on an ephemeral port and the real broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from invsync_pipeline.messaging.retry import REASON_HEADER, RETRIES_HEADER
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.sync.queues import in_window
from invsync_pipeline.sync.sync_log import SyncLog
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline_tests.factories import event, publish_events, publish_raw, queue_depth
from invsync_pipeline_tests.recon_plant import set_config

pytestmark = pytest.mark.broker

TOKEN = "test-token"


@pytest.fixture
def mes(tmp_path, monkeypatch):
    running = run_in_thread(tmp_path / "mes.sqlite", TOKEN)
    monkeypatch.setenv("INVSYNC_MES_URL", running.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    yield running
    running.stop()


@pytest.fixture
def client(mes) -> ReferenceMesClient:
    return ReferenceMesClient(mes.url, TOKEN, timeout_seconds=5)


def _wait(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Running:
    """A worker on a background thread, stopped at the end of the test."""

    def __init__(self, settings, client):
        self.worker = SyncWorker(settings, client)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def start_worker(settings, topology, client):
    started: list[_Running] = []

    def start(batch_window_ms: float | None = None) -> SyncWorker:
        """A worker; ``batch_window_ms`` widens its batch window, so a test knows what one batch holds."""
        chosen = settings
        if batch_window_ms is not None:
            chosen = settings.model_copy(
                update={"sync": settings.sync.model_copy(update={"batch_window_ms": batch_window_ms})}
            )
        running = _Running(chosen, client)
        started.append(running)
        return running.worker

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


def _stock(client: ReferenceMesClient) -> dict[tuple[str, str], Decimal]:
    return {(row.location, row.material_number): Decimal(str(row.quantity)) for row in client.stock()}


def _applied_ids(client: ReferenceMesClient) -> list[str]:
    return [row["transaction_id"] for row in client.applied_transactions() if row["status"] == "applied"]


def test_events_are_applied_to_the_mes_and_acked(settings, topology, connection, client, start_worker):
    events = [
        event(material_number="RAW-1", quantity="100"),
        event(material_number="RAW-1", transaction_type="issue", reason="production_consumption",
              movement_type="261", quantity="30"),
        event(material_number="FG-1", material_type="finished", reason="production_receipt", movement_type="101",
              quantity="5"),
        event(material_number="RAW-1", transaction_type="transfer", reason="stock_transfer", movement_type="311",
              quantity="20", to_location="WH01/RM02"),
    ]  # fmt: skip
    publish_events(connection, topology.exchange, events)
    worker = start_worker()

    _wait(lambda: worker.stats.applied == 4, what="4 applied")

    assert _stock(client) == {
        ("WH01/RM01", "RAW-1"): Decimal("50"),
        ("WH01/RM01", "FG-1"): Decimal("5"),
        ("WH01/RM02", "RAW-1"): Decimal("20"),
    }
    for queue in topology.work_queues:
        assert queue_depth(connection, queue) == 0
    records = SyncLog(settings.home / "sync.sqlite").records()
    assert {r.transaction_id for r in records} == {e["transaction_id"] for e in events}
    assert all(r.mes_transaction_id and r.confirmed_ms <= r.acked_ms for r in records)


def test_a_duplicate_delivery_is_applied_once(settings, topology, connection, client, start_worker):
    receipt = event(quantity="7")
    publish_events(connection, topology.exchange, [receipt, receipt, receipt])
    worker = start_worker()

    _wait(lambda: worker.stats.applied + worker.stats.duplicates == 3, what="3 handled")

    assert worker.stats.applied == 1
    assert _stock(client) == {("WH01/RM01", "MAT-100"): Decimal("7")}
    assert _applied_ids(client) == [receipt["transaction_id"]]


def test_mes_errors_are_retried_on_the_configured_steps_then_applied(
    settings, topology, connection, client, start_worker
):
    client.set_faults(error_rate=1.0)
    receipt = event(quantity="3")
    publish_events(connection, topology.exchange, [receipt])
    worker = start_worker()

    _wait(lambda: worker.stats.retried >= 2, what="two retries")
    client.set_faults(error_rate=0.0)
    _wait(lambda: worker.stats.applied == 1, what="applied after retries")

    (record,) = SyncLog(settings.home / "sync.sqlite").records()
    assert record.attempts == 3  # first try + retry.1 + retry.2
    assert _stock(client) == {("WH01/RM01", "MAT-100"): Decimal("3")}


def test_mes_down_past_three_retries_parks_the_message_with_the_reason(
    settings, topology, connection, client, start_worker
):
    client.set_faults(outage=True)
    receipt = event()
    publish_events(connection, topology.exchange, [receipt])
    worker = start_worker()

    _wait(lambda: worker.stats.parked == 1, what="parked")

    assert worker.stats.retried == 3
    channel = connection.channel()
    method, props, body = channel.basic_get(topology.parking, auto_ack=True)
    assert json.loads(body)["transaction_id"] == receipt["transaction_id"]
    assert props.headers[RETRIES_HEADER] == 3
    assert "MES unavailable" in props.headers[REASON_HEADER]
    client.set_faults(outage=False)
    assert _applied_ids(client) == []


def test_an_invalid_message_goes_straight_to_parking_with_its_reason(
    settings, topology, connection, client, start_worker
):
    bad = event(quantity="-5")  # a receipt must be > 0
    publish_raw(connection, topology.exchange, [("inventory.wh01.raw.receipt", json.dumps(bad).encode())])
    publish_events(connection, topology.exchange, [event()])
    worker = start_worker()

    _wait(lambda: worker.stats.parked == 1 and worker.stats.applied == 1, what="one parked, one applied")

    channel = connection.channel()
    _, props, _ = channel.basic_get(topology.parking, auto_ack=True)
    assert props.headers[REASON_HEADER].startswith("invalid: quantity=-5")
    assert worker.stats.retried == 0


def test_events_from_the_mes_itself_are_not_posted_back(settings, topology, connection, client, start_worker):
    publish_events(connection, topology.exchange, [
        event(source_system="MES", transaction_type="issue", reason="production_consumption", movement_type="261"),
        event(source_system="RECON", target_system="ERP", transaction_type="adjustment", reason="correction",
              movement_type="701", quantity="2"),
    ])  # fmt: skip
    worker = start_worker()

    _wait(lambda: worker.stats.skipped == 2, what="2 skipped")

    assert _applied_ids(client) == []


def test_adjustments_wait_for_the_low_activity_window(settings, topology, connection, client, monkeypatch):
    closed = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"noncritical_windows": ("00:00-00:00",)})}
    )
    adjustment = event(transaction_type="adjustment", reason="correction", movement_type="701", quantity="4")
    publish_events(connection, topology.exchange, [adjustment, event(quantity="1")])
    worker = SyncWorker(closed, client)
    thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 3}, daemon=True)
    thread.start()
    thread.join(10)

    assert worker.stats.applied == 1  # the receipt, at once
    noncritical = [q for q in topology.work_queues if q.endswith("noncritical")]
    assert queue_depth(connection, noncritical[0]) == 1  # the adjustment waits


def test_window_arithmetic_handles_midnight():
    from datetime import datetime

    assert in_window(("22:00-04:00",), datetime(2026, 1, 1, 23, 30))
    assert in_window(("22:00-04:00",), datetime(2026, 1, 1, 3, 59))
    assert not in_window(("22:00-04:00",), datetime(2026, 1, 1, 12, 0))
    assert in_window((), datetime(2026, 1, 1, 12, 0))


def _worker_process(settings) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invsync_pipeline.cli", "sync-worker", "--log-level", "WARNING"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_or_show(proc: subprocess.Popen, predicate, what: str) -> None:
    try:
        _wait(predicate, timeout=30, what=what)
    except AssertionError:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"timed out waiting for {what}; worker stderr:\n{err.decode()[-3000:]}") from None


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_applies_nothing_twice(settings, topology, connection, client, mes):
    # Small batches of slow calls, so the kill lands in the middle of the stream.
    set_config(Path(os.environ["INVSYNC_CONFIG"]), sync={"batch_max_events": 5})
    client.set_faults(latency_ms=200)
    events = [event(material_number=f"M-{i % 10}", quantity="1") for i in range(150)]
    publish_events(connection, topology.exchange, events)
    proc = _worker_process(settings)
    _wait_or_show(proc, lambda: len(_applied_ids(client)) >= 30, "30 applied before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(_applied_ids(client)) < 150, "the kill came too late to test anything"
    client.set_faults(latency_ms=0)

    worker = SyncWorker(settings, client)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    _wait(lambda: len(_applied_ids(client)) == 150, what="all 150 applied")
    worker.stop()
    thread.join(15)

    applied = _applied_ids(client)
    assert sorted(applied) == sorted(e["transaction_id"] for e in events)  # each once
    assert sum(_stock(client).values()) == Decimal(150)
    # The sync log kept a row for every message, written before its ack: none lost to the kill.
    # What the MES had applied before the kill came back as a redelivery and counts as applied.
    rows = SyncLog(settings.home / "sync.sqlite").records()
    assert sorted(r.transaction_id for r in rows) == sorted(applied)
    assert {r.status for r in rows} == {"applied"}


@pytest.mark.slow
def test_sigterm_finishes_in_flight_work_acks_and_exits(settings, topology, connection, client, mes):
    client.set_faults(latency_ms=200)
    events = [event(quantity="1") for _ in range(60)]
    publish_events(connection, topology.exchange, events)
    proc = _worker_process(settings)
    _wait_or_show(proc, lambda: len(_applied_ids(client)) >= 5, "some applied")

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0, err.decode()
    applied = len(_applied_ids(client))
    raw_queue = next(q for q in topology.work_queues if q.endswith(".raw"))
    # Everything applied was acked, everything else is back in the queue: nothing in between.
    assert applied + queue_depth(connection, raw_queue) == 60


@pytest.mark.slow
def test_heartbeats_survive_mes_calls_longer_than_the_heartbeat(settings, topology, connection, client):
    # Heartbeat 1 s (the broker drops a connection after ~2 missed beats); each MES call takes 3 s.
    fast_beat = settings.model_copy(update={"sync": settings.sync.model_copy(update={"heartbeat_seconds": 1})})
    client.set_faults(latency_ms=3000)
    publish_events(connection, topology.exchange, [event(quantity="1") for _ in range(3)])
    worker = SyncWorker(fast_beat, client)
    reconnects = []
    original = worker._connect
    worker._connect = lambda: (reconnects.append(1), original())[1]
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    _wait(lambda: worker.stats.applied == 3, timeout=30, what="3 slow applies")
    worker.stop()
    thread.join(15)

    assert len(reconnects) == 1  # connected once, never dropped
    assert len(_applied_ids(client)) == 3


def test_a_post_whose_answer_was_lost_is_looked_up_not_retried_or_parked(
    settings, topology, connection, client, start_worker
):
    client.set_faults(lost_answer_rate=1.0)  # every post is applied, then answered 504
    events = [event(material_number="LOST-ANSWER", quantity="2") for _ in range(5)]
    publish_events(connection, topology.exchange, events)
    worker = start_worker()

    _wait(lambda: worker.stats.applied == 5, what="5 applied")

    assert (worker.stats.retried, worker.stats.parked) == (0, 0)
    assert sorted(_applied_ids(client)) == sorted(e["transaction_id"] for e in events)
    assert all(queue_depth(connection, q) == 0 for q in (*topology.retry_queues, topology.parking))
    rows = SyncLog(settings.home / "sync.sqlite").records()
    assert {r.status for r in rows} == {"applied"} and len(rows) == 5


def test_the_late_original_of_a_compensated_movement_is_not_applied(
    settings, topology, connection, client, start_worker
):
    from invsync_pipeline.ops.compensations import register

    late = event(material_number="COMP-1", quantity="7")
    register(settings, "RECON-test", "MES", [late["transaction_id"]])  # an adjustment stands for it
    other = event(material_number="COMP-1", quantity="3")
    publish_events(connection, topology.exchange, [late, other])
    worker = start_worker()

    _wait(lambda: worker.stats.applied + worker.stats.compensated == 2, what="both handled")

    assert worker.stats.compensated == 1
    assert _applied_ids(client) == [other["transaction_id"]]
    assert _stock(client) == {("WH01/RM01", "COMP-1"): Decimal("3")}
    statuses = {r.transaction_id: r.status for r in SyncLog(settings.home / "sync.sqlite").records()}
    assert statuses == {late["transaction_id"]: "compensated", other["transaction_id"]: "applied"}


def test_a_burst_goes_to_the_mes_in_batches_and_each_event_is_applied_once(
    settings, topology, connection, client, start_worker
):
    events = [event(material_number=f"B-{i % 7}", quantity="1") for i in range(400)]
    publish_events(connection, topology.exchange, events)
    worker = start_worker()

    _wait(lambda: worker.stats.applied == 400, what="400 applied")

    assert worker.stats.mes_calls <= len(events) // 4  # many per call, not one call per event
    assert sorted(_applied_ids(client)) == sorted(e["transaction_id"] for e in events)
    assert sum(_stock(client).values()) == Decimal(400)


def test_a_batch_with_a_refused_a_retryable_and_good_items(settings, topology, connection, client, start_worker):
    """Per item: the refused one is parked with the MES's reason, the one the MES cannot take now
    (its location is under a count) goes to its retry tier and is applied once the count is done,
    and the rest of the batch is applied at once."""
    from invsync_pipeline.contract import parse_event

    taken = event(material_number="CONFLICT", quantity="5")
    client.post_transaction(parse_event(taken))  # the id is taken by another movement already
    clash = {**taken, "quantity": "6"}
    counted = event(material_number="COUNTED", quantity="2", location="WH01/RM09")
    good = [event(material_number="FINE", quantity="1") for _ in range(10)]
    client.set_faults(locked_locations=["WH01/RM09"])
    publish_events(connection, topology.exchange, [*good[:5], clash, counted, *good[5:]])
    worker = start_worker(batch_window_ms=500)

    _wait(lambda: worker.stats.applied == 10 and worker.stats.parked == 1 and worker.stats.retried >= 1,
          what="10 applied, 1 parked, 1 retried")  # fmt: skip
    assert worker.stats.mes_calls < 4  # in one batch (a retry may have come meanwhile), not one call each
    assert _stock(client)[("WH01/RM01", "FINE")] == Decimal(10)
    assert ("WH01/RM09", "COUNTED") not in _stock(client)
    method, props, _ = connection.channel().basic_get(topology.parking, auto_ack=True)
    assert method is not None and "different event" in props.headers[REASON_HEADER]

    client.set_faults(locked_locations=[])
    _wait(lambda: worker.stats.applied == 11, what="the counted location's movement applied after its retry")
    assert _stock(client)[("WH01/RM09", "COUNTED")] == Decimal(2)
    assert worker.stats.parked == 1


def test_a_duplicate_inside_one_batch_is_applied_once(settings, topology, connection, client, start_worker):
    twice = event(material_number="TWICE", quantity="3")
    others = [event(material_number="OTHER", quantity="1") for _ in range(4)]
    publish_events(connection, topology.exchange, [others[0], twice, others[1], twice, *others[2:]])
    worker = start_worker(batch_window_ms=1000)

    _wait(lambda: worker.stats.applied + worker.stats.duplicates == 6, what="6 handled")

    assert (worker.stats.applied, worker.stats.duplicates, worker.stats.mes_calls) == (5, 1, 1)
    assert _stock(client) == {("WH01/RM01", "TWICE"): Decimal(3), ("WH01/RM01", "OTHER"): Decimal(4)}
    statuses = {r.transaction_id: r.status for r in SyncLog(settings.home / "sync.sqlite").records()}
    assert statuses[twice["transaction_id"]] == "applied"  # the first outcome is the one logged


@pytest.mark.slow
def test_a_worker_killed_between_the_mes_answer_and_the_ack(settings, topology, connection, client, mes):
    """The MES applies a batch the worker never acks (killed while the MES works on it). The
    broker delivers the messages again; the next worker finds them applied: once, as applied."""
    client.set_faults(latency_ms=3000)  # the MES takes the batch, then works on it for 3 s
    events = [event(material_number=f"K-{i % 3}", quantity="1") for i in range(20)]
    publish_events(connection, topology.exchange, events)
    queue = topology.work_queue_for("WH01", "raw", "receipt")
    proc = _worker_process(settings)
    _wait_or_show(proc, lambda: queue_depth(connection, queue) == 0, "all 20 taken by the worker")
    time.sleep(1.0)  # the batch is at the MES, which has not answered yet
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _wait(lambda: len(_applied_ids(client)) == 20, timeout=30, what="the MES to finish the batch nobody waits for")
    assert not SyncLog(settings.home / "sync.sqlite").records()  # nothing was acked
    client.set_faults(latency_ms=0)

    worker = SyncWorker(settings, client)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    _wait(lambda: worker.stats.applied == 20, what="20 settled by the next worker")
    worker.stop()
    thread.join(15)

    assert (worker.stats.redelivered, worker.stats.duplicates) == (20, 0)
    assert sorted(_applied_ids(client)) == sorted(e["transaction_id"] for e in events)  # each once
    assert sum(_stock(client).values()) == Decimal(20)
    rows = SyncLog(settings.home / "sync.sqlite").records()
    assert {(r.status, r.redelivered) for r in rows} == {("applied", True)} and len(rows) == 20


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


@pytest.mark.slow
def test_several_workers_share_the_queues_and_one_killed_is_restarted(settings, topology, connection, client, mes):
    """`sync-worker --processes 3`: kill -9 one worker mid-stream; the supervisor restarts it,
    the others take its unacked messages, and every event is applied exactly once."""
    set_config(Path(os.environ["INVSYNC_CONFIG"]), sync={"batch_max_events": 5, "prefetch": 20})
    client.set_faults(latency_ms=200)
    events = [event(material_number=f"W-{i % 10}", quantity="1") for i in range(300)]
    publish_events(connection, topology.exchange, events)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invsync_pipeline.cli", "sync-worker", "--processes", "3", "--log-level", "INFO"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_or_show(proc, lambda: len(_children(proc.pid)) == 3 and len(_applied_ids(client)) >= 30,
                      "3 workers and 30 applied")  # fmt: skip
        first = _children(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        assert len(_applied_ids(client)) < 300, "the kill came too late to test anything"
        _wait_or_show(proc, lambda: len(_children(proc.pid)) == 3 and first[0] not in _children(proc.pid),
                      "the killed worker restarted")  # fmt: skip
        client.set_faults(latency_ms=0)
        _wait_or_show(proc, lambda: len(_applied_ids(client)) == 300, "all 300 applied")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers, if the test failed

    assert proc.returncode == 0, err[-3000:]
    totals = json.loads(out.strip().splitlines()[-1])
    assert (totals["workers"], totals["restarts"]) == (3, 1)
    assert "worker 0" in err and "killed by signal 9" in err
    applied = _applied_ids(client)
    assert sorted(applied) == sorted(e["transaction_id"] for e in events)  # each once
    assert sum(_stock(client).values()) == Decimal(300)
    rows = SyncLog(settings.home / "sync.sqlite").records()
    assert sorted(r.transaction_id for r in rows) == sorted(applied)
    assert {r.status for r in rows} == {"applied"}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_workers_stop_themselves_when_their_supervisor_is_killed(settings, topology, mes):
    proc = subprocess.Popen(
        [sys.executable, "-m", "invsync_pipeline.cli", "sync-worker", "--processes", "2", "--log-level", "WARNING"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_or_show(proc, lambda: len(_children(proc.pid)) == 2, "2 workers")
        workers = _children(proc.pid)
        proc.kill()
        proc.wait(10)
        _wait(lambda: not any(_alive(pid) for pid in workers), timeout=30, what="the orphaned workers to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
