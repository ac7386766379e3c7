"""Movements of an hour that arrive after the hour was reconciled: through a retry tier, and
through a broker outage that spans an hour boundary while the ERP keeps posting.

The broker that goes down is a private node (scripts/rabbit-node): the machine's broker is
shared and never stopped. Nothing is mocked: ERP tables, the reference MES, the outbox, the
worker, the ledger tap sensor and the hourly assets all run for real.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.messaging.topology import apply_topology, build_topology
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.resources import InvsyncResource
from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor
from invsync_pipeline.settings import load_settings
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event, queue_depth
from invsync_pipeline_tests.recon_plant import (
    TOKEN,
    erp_posts_and_publishes,
    hour_ago,
    key_of,
    plant_fixture,  # noqa: F401 - the `plant` fixture
    reconcile_with_corrections,
    set_config,
    settle,
    stamp,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CONFIG = lambda: Path(os.environ["INVSYNC_CONFIG"])  # noqa: E731


@pytest.fixture
def settings(settings):
    """A first retry tier of a few seconds: long enough to see a message in it, short to wait out."""
    set_config(CONFIG(), topology={"retry_delays_ms": [5_000, 60_000, 60_000]})
    return load_settings()


def _query(settings, sql: str, params: list | None = None) -> list[tuple]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.2)


def _applied_counts(mes: ReferenceMesClient) -> Counter:
    return Counter(row["transaction_id"] for row in mes.applied_transactions() if row["status"] == "applied")


def _every_key_agrees(erp: ErpDatabase, mes: ReferenceMesClient) -> dict:
    """(material, location) -> (ERP, MES) for every key where the two differ now."""
    stock = erp.stock_as_of(None, include_zero=True)
    books = {(r.material, r.location): Decimal(str(r.quantity)) for r in stock.itertuples()}
    floor = {(r.material_number, r.location): r.quantity for r in mes.stock()}
    return {k: (books.get(k, 0), floor.get(k, 0)) for k in books.keys() | floor.keys()
            if books.get(k, 0) != floor.get(k, 0)}  # fmt: skip


def test_a_movement_waiting_in_a_retry_tier_when_its_hour_is_reconciled_is_applied_once_and_never_corrected(
    settings, topology, connection, plant
):
    erp, mes = plant
    hour, next_hour = hour_ago(3), hour_ago(2)
    erp_posts_and_publishes(settings, erp, [event(material_number="M-RETRY", quantity="500",
                                                  timestamp=stamp(hour, 5))])  # fmt: skip
    settle(settings, connection, topology)
    mes.set_faults(outage=True)  # the MES is down: the worker sends the next movement to a retry tier
    late = parse_event(event(material_number="M-RETRY", quantity="40", timestamp=stamp(hour, 30)))
    erp_posts_and_publishes(settings, erp, [late])
    _wait_for(lambda: queue_depth(connection, topology.retry_queues[0]) == 1, 30, "the retry tier")
    # The worker stops while the hour is reconciled, so however long that takes the movement is
    # still on its way: in the retry tier, or back in its plant queue once the tier hands it on.
    plant.stop_worker()
    mes.set_faults(outage=False)
    drain_ledger_tap(settings)  # the ledger has it; the MES does not
    set_config(CONFIG(), reconciliation={"in_flight_window_minutes": 0})  # presence alone says it is on its way

    reconcile_with_corrections(key_of(hour))

    ((cause, is_timing, quantity, ids),) = _query(
        settings, "SELECT cause, is_timing, explained_quantity, transaction_ids FROM recon.variance_investigation "
                  "WHERE partition_hour = ? AND material_number = 'M-RETRY'", [hour])  # fmt: skip
    assert cause in ("retrying", "pending_sync") and is_timing  # retrying, unless its 5 s ran out meanwhile
    assert (quantity, ids) == (Decimal("40"), [late.transaction_id])
    assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(0,)]

    # The retry tier hands the movement on; the worker, back, applies it.
    plant.start_worker()
    _wait_for(lambda: _applied_counts(mes)[late.transaction_id] == 1, 150, "the retried movement")
    settle(settings, connection, topology)
    reconcile_with_corrections(key_of(next_hour))

    assert _query(settings, "SELECT count(*) FROM recon.variances WHERE partition_hour = ? AND is_variance",
                  [next_hour]) == [(0,)]  # fmt: skip
    assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(0,)]
    assert _applied_counts(mes)[late.transaction_id] == 1
    assert _every_key_agrees(erp, mes) == {}


def test_a_broker_outage_across_an_hour_boundary_buffers_the_erp_and_nothing_counts_twice(
    settings, private_broker, tmp_path, monkeypatch
):
    """The broker stops for longer than an hour boundary while the ERP posts; the hourly runs go
    on meanwhile; the broker comes back and the outbox flushes. Once settled every key agrees,
    nothing was applied twice, and the findings and the audit trail tell the story."""
    monkeypatch.setenv("INVSYNC_AMQP_URL", private_broker.url)
    settings = load_settings()
    apply_topology(settings)
    erp = ErpDatabase.from_settings(settings)
    erp.create_schema()
    mes_service = run_in_thread(tmp_path / "mes.sqlite", TOKEN)
    monkeypatch.setenv("INVSYNC_MES_URL", mes_service.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    settings = load_settings()
    mes = ReferenceMesClient(mes_service.url, TOKEN)
    worker = SyncWorker(settings, mes)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    before, first, second, after = hour_ago(4), hour_ago(3), hour_ago(2), hour_ago(1)
    materials = ("M-A", "M-B", "M-C")
    try:
        opening = [event(material_number=m, quantity="1000", timestamp=stamp(before, 5))
                   for m in (*materials, "M-LOST")]  # fmt: skip
        erp_posts_and_publishes(settings, erp, opening)
        _wait_for(lambda: len(_applied_counts(mes)) == len(opening), 30, "the opening stock in the MES")
        drain_ledger_tap(settings)
        reconcile_with_corrections(key_of(before))

        private_broker.stop()  # the broker is down from here ...
        stream = [
            event(material_number=materials[i % 3], quantity=str(10 + i), timestamp=stamp(hour, 10 + 7 * i),
                  **({"transaction_type": "issue", "reason": "shipment", "movement_type": "601"} if i % 2 else {}))
            for hour in (first, second) for i in range(6)
        ]  # fmt: skip
        for movement in stream:  # ... while the ERP keeps posting across the hour boundary
            erp_posts_and_publishes(settings, erp, [movement])
        lost = parse_event(event(material_number="M-LOST", quantity="25", timestamp=stamp(first, 40)))
        erp.post(lost)  # booked in the ERP, never handed to the outbox (an upstream that lost it)
        with Outbox(settings) as box:
            assert box.pending_count() == len(stream)

        # The hourly runs go on, the broker down: the sensor's tick survives, the runs find the
        # buffered movements in the outbox (in flight) and correct nothing. They run right after
        # their hours closed, so the lost movement is young too.
        tick = ledger_tap_sensor(dg.build_sensor_context(resources={"invsync": InvsyncResource()}))
        assert [r.partition_key for r in tick.run_requests] == [key_of(before)]  # what is on disk still gets runs
        set_config(CONFIG(), reconciliation={"in_flight_window_minutes": 6 * 60})
        for hour in (first, second):
            reconcile_with_corrections(key_of(hour))
        assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(0,)]
        causes = _query(settings, "SELECT partition_hour, material_number, cause, detail "
                                  "FROM recon.explained_movements WHERE partition_hour IN (?, ?) ORDER BY ALL",
                        [first, second])  # fmt: skip
        assert {cause for *_, cause, _ in causes} == {"in_flight"}
        assert sum(1 for *_, detail in causes if detail.startswith("outbox: buffered")) == len(stream)
        ((lost_detail,),) = [(d,) for _, m, _, d in causes if m == "M-LOST"]
        assert lost_detail.startswith("ERP document not on the exchange yet")

        private_broker.start()  # the broker is back: the outbox flushes, the worker applies
        with Outbox(settings) as box:
            assert box.flush_until_empty(timeout=120).pending == 0
        ids = [e["transaction_id"] for e in opening + stream]
        _wait_for(lambda: set(_applied_counts(mes)) >= set(ids), 120, "the buffered movements in the MES")
        conn = connect(settings)
        try:
            _wait_for(lambda: all(queue_depth(conn, q) == 0 for q in build_topology(settings).work_queues), 60,
                      "the plant queues to empty")  # fmt: skip
        finally:
            conn.close()
        drain_ledger_tap(settings)

        # Time passes: the next run looks again at what was in flight. The buffered movements
        # arrived (both systems begin the hour equal); the lost one did not and is re-sent as itself.
        set_config(CONFIG(), reconciliation={"in_flight_window_minutes": 60})
        reconcile_with_corrections(key_of(after))
        _wait_for(lambda: _applied_counts(mes)[lost.transaction_id] == 1, 60, "the re-sent movement")

        assert _every_key_agrees(erp, mes) == {}
        assert max(_applied_counts(mes).values()) == 1  # nothing applied twice
        corrections = _query(settings, "SELECT material_number, cause, method, status, explained_by "
                                       "FROM recon.corrections")  # fmt: skip
        assert corrections == [("M-LOST", "not_published", "resend", "applied", [lost.transaction_id])]
        looked_again = _query(settings, "SELECT material_number, cause, in_flight_since FROM recon.explained_movements "
                                        "WHERE partition_hour = ?", [after])  # fmt: skip
        assert looked_again == [("M-LOST", "not_published", first)]
        trail = _query(settings, "SELECT action, actor, transaction_ids FROM recon.correction_audit_log")
        assert trail == [("applied", "auto:erp_wins_receipts_and_shipments", [lost.transaction_id])]
    finally:
        worker.stop()
        thread.join(30)
        mes.close()
        mes_service.stop()
        erp.dispose()
