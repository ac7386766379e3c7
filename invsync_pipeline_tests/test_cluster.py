"""A 3-node RabbitMQ cluster (private nodes, scripts/rabbit-cluster) loses a node under load.

The outbox relay publishes, the sync worker applies and the drain stages, all with
INVSYNC_AMQP_URL naming the three nodes; `topology apply` declares quorum queues there
(queue_type auto). Node 1, the one every client is connected to and where the queues' leaders
live, is killed with kill -9 in mid-stream: each client connects again to a surviving node, and
every movement reaches the MES once and the staged log at least once (staging keeps one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest

from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.messaging.topology import apply_topology
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.settings import load_settings
from invsync_pipeline.sync.sync_log import SyncLog
from invsync_pipeline_tests.factories import event

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOKEN = "cluster-token"
EVENTS = 1500


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _staged_ids(settings) -> list[str]:
    ids = []
    for segment in sorted((settings.staged_dir / "events").rglob("*.jsonl")):
        ids += [json.loads(line)["transaction_id"] for line in segment.read_text().splitlines() if line]
    return ids


def test_the_cluster_loses_a_node_under_load_and_nothing_is_lost_or_applied_twice(
    settings, private_cluster, tmp_path, monkeypatch
):
    monkeypatch.setenv("INVSYNC_AMQP_URL", private_cluster.urls)
    settings = load_settings()
    assert settings.queue_type == "quorum"
    topo = apply_topology(settings)
    conn = connect(settings)
    channel = conn.channel()
    declared = channel.queue_declare(topo.ledger_tap, passive=True)
    assert declared.method.message_count == 0
    conn.close()

    mes = run_in_thread(tmp_path / "mes.sqlite", TOKEN)
    monkeypatch.setenv("INVSYNC_MES_URL", mes.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    client = ReferenceMesClient(mes.url, TOKEN, timeout_seconds=10)
    cli = [sys.executable, "-m", "invsync_pipeline.cli"]
    worker = subprocess.Popen([*cli, "sync-worker", "--log-level", "WARNING"], env=dict(os.environ),
                              stderr=subprocess.PIPE)  # fmt: skip
    relay = subprocess.Popen([*cli, "outbox", "relay"], env=dict(os.environ), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    events = [event(material_number=f"M-{i % 20}", quantity="1") for i in range(EVENTS)]
    stop_drain = threading.Event()
    drained: list[object] = []

    def drain_loop() -> None:  # the ledger tap sensor's ticks, back to back
        while not stop_drain.is_set():
            drained.append(drain_ledger_tap(settings, max_seconds=5))

    drainer = threading.Thread(target=drain_loop, daemon=True)
    try:
        drainer.start()
        # The ERP posts at a steady pace; node 1 dies a third of the way in.
        with Outbox(settings) as box:
            for start in range(0, EVENTS, 50):
                box.enqueue([parse_event(e) for e in events[start : start + 50]])
                if start == EVENTS // 3:
                    _wait(lambda: len(list(client.applied_transactions())) > 0, 60, "the first movements applied")
                    private_cluster.kill(1)
                time.sleep(0.05)
        ids = sorted(e["transaction_id"] for e in events)
        _wait(lambda: len(list(client.applied_transactions())) >= EVENTS, 180, f"all {EVENTS} applied in the MES")
        _wait(lambda: set(_staged_ids(settings)) >= set(ids), 120, "every movement staged")
    finally:
        stop_drain.set()
        relay.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGTERM)
        _, relay_err = relay.communicate(timeout=60)
        _, worker_err = worker.communicate(timeout=60)
        drainer.join(30)
        applied = [row["transaction_id"] for row in client.applied_transactions() if row["status"] == "applied"]
        stock = sum(Decimal(str(row.quantity)) for row in client.stock())
        mes.stop()

    assert sorted(applied) == ids, "each movement applied exactly once"
    assert stock == Decimal(EVENTS)
    staged = _staged_ids(settings)
    assert set(staged) == set(ids), "nothing lost on the way to the staged log"
    rows = SyncLog(settings.home / "sync.sqlite").records()
    assert sorted(r.transaction_id for r in rows) == ids
    assert {r.status for r in rows} <= {"applied", "duplicate"}
    assert sum(r.status == "applied" for r in rows) == EVENTS
    assert worker.returncode == 0, worker_err.decode()[-3000:]
    # Every client noticed the loss and carried on with the surviving nodes.
    assert b"reconnect" in worker_err.lower() or b"connection" in worker_err.lower(), worker_err.decode()[-2000:]
    assert any(getattr(r, "reconnects", 0) for r in drained) or b"retrying" in relay_err, relay_err.decode()[-2000:]


def test_clients_skip_a_node_that_is_down_and_use_the_next(settings, topology, monkeypatch):
    """Node 1 of the list does not answer (nothing listens there): the outbox, the drain and a
    plain connection go to node 2, the machine's broker."""
    from invsync_pipeline_tests.private_broker import free_port

    monkeypatch.setenv("INVSYNC_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F,{settings.amqp_url}")
    two = load_settings()
    connect(two).close()
    with Outbox(two) as box:
        result = box.publish([parse_event(event()) for _ in range(5)])
    assert (result.published, result.pending, result.broker_error) == (5, 0, None)
    drained = drain_ledger_tap(two, max_seconds=10)
    assert drained.consumed == 5
