"""Reconciliation while movements still flow: a late movement is never counted twice.

Hours are reconciled while some of their movements are still on the way. Those are `in_flight`
(never corrected) and looked at again once the in-flight window has passed. A correction then
re-sends the movement itself, or compensates it by an adjustment; either way its effect lands
once in each system, however late the original comes. Everything runs on the real broker, the
reference MES, ERP tables and DuckDB; the window is changed in the config file between runs, as
time passing would.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.recon.review_store import review_store
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event
from invsync_pipeline_tests.recon_plant import (
    erp_posts_and_publishes,
    hour_ago,
    key_of,
    plant_fixture,  # noqa: F401 - the `plant` fixture
    reconcile,
    reconcile_with_corrections,
    set_config,
    settle,
    stamp,
)

pytestmark = pytest.mark.broker


def _window(minutes: int) -> None:
    """The in-flight window the next runs use (time passing, or a plant's setting)."""
    set_config(Path(os.environ["INVSYNC_CONFIG"]), reconciliation={"in_flight_window_minutes": minutes})


def _query(settings, sql: str, params: list | None = None) -> list[tuple]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def _findings(settings, hour, material: str) -> list[tuple]:
    return _query(
        settings,
        "SELECT system, cause, is_timing, explained_quantity, transaction_ids FROM recon.variance_investigation "
        "WHERE partition_hour = ? AND material_number = ? ORDER BY cause",
        [hour, material],
    )


def _mes_stock(mes, material: str, location: str = "WH01/RM01") -> Decimal:
    return sum((r.quantity for r in mes.stock(location=location, material_number=material)), Decimal(0))


def _erp_stock(erp, material: str, location: str = "WH01/RM01") -> Decimal:
    stock = erp.stock_as_of(None, include_zero=True, material=material)
    return sum((Decimal(str(q)) for q in stock[stock["location"] == location]["quantity"]), Decimal(0))


def _applied_times(mes, transaction_id: str) -> int:
    """How many times the MES log holds this transaction as applied (idempotency: at most once)."""
    return sum(1 for row in mes.applied_transactions() if row["transaction_id"] == transaction_id
               and row["status"] == "applied")  # fmt: skip


def test_a_movement_still_on_its_way_is_in_flight_then_looked_at_again_and_resent_once(
    settings, topology, connection, plant
):
    erp, mes = plant
    hour, next_hour, last_hour = hour_ago(3), hour_ago(2), hour_ago(1)
    erp_posts_and_publishes(settings, erp, [event(material_number="M-LATE", quantity="1000",
                                                  timestamp=stamp(hour, 5))])  # fmt: skip
    late = parse_event(event(material_number="M-LATE", quantity="30", timestamp=stamp(hour, 20)))
    erp.post(late)  # booked in the ERP; its message is still on its way (a slow upstream)
    settle(settings, connection, topology)

    _window(24 * 60)  # at the hour's first look the movement is young
    reconcile_with_corrections(key_of(hour))

    assert _findings(settings, hour, "M-LATE") == [("MES", "in_flight", True, Decimal("30"), [late.transaction_id])]
    assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(0,)]

    _window(60)  # later: its window has passed and it has not come
    reconcile_with_corrections(key_of(next_hour))

    assert _findings(settings, next_hour, "M-LATE") == [
        ("MES", "not_published", False, Decimal("30"), [late.transaction_id]),
    ]  # looked at again: no carried_over row is left beside it
    ((method, target, quantity, status, explained_by),) = _query(
        settings, "SELECT method, target_system, quantity, status, explained_by FROM recon.corrections"
    )
    assert (method, target, quantity, status, explained_by) == (
        "resend", "MES", Decimal("30"), "applied", [late.transaction_id],
    )  # fmt: skip
    settle(settings, connection, topology)
    assert _mes_stock(mes, "M-LATE") == _erp_stock(erp, "M-LATE") == Decimal("1030")

    # The original finally arrives: a duplicate of the re-sent movement, refused by idempotency.
    with Outbox(settings) as box:
        box.publish([late])
    settle(settings, connection, topology)
    assert _applied_times(mes, late.transaction_id) == 1
    assert _mes_stock(mes, "M-LATE") == _erp_stock(erp, "M-LATE") == Decimal("1030")

    reconcile_with_corrections(key_of(last_hour))
    assert _query(settings, "SELECT count(*) FROM recon.variances WHERE partition_hour = ? AND is_variance",
                  [last_hour]) == [(0,)]  # fmt: skip
    assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(1,)]


def test_a_held_correction_whose_variance_resolved_itself_cannot_be_approved_and_is_closed_as_resolved(
    settings, topology, connection, plant
):
    erp, mes = plant
    hour, next_hour = hour_ago(4), hour_ago(3)
    erp_posts_and_publishes(settings, erp, [event(material_number=m, quantity="1000", timestamp=stamp(hour, 5))
                                            for m in ("BIG-1", "BIG-2")])  # fmt: skip
    late = {m: parse_event(event(material_number=m, quantity="600", timestamp=stamp(hour, 10)))
            for m in ("BIG-1", "BIG-2")}  # fmt: skip
    for movement in late.values():
        erp.post(movement)  # never sent (yet)
    settle(settings, connection, topology)
    _window(0)
    reconcile_with_corrections(key_of(hour))
    held = dict(_query(settings, "SELECT material_number, correction_id FROM recon.corrections "
                                 "WHERE status = 'held_for_review' AND method = 'resend'"))  # fmt: skip
    assert sorted(held) == ["BIG-1", "BIG-2"]  # 60% of the balance: critical, waits for a supervisor

    # Both originals arrive after all (the upstream caught up): the variances resolve themselves.
    with Outbox(settings) as box:
        box.publish(list(late.values()))
    settle(settings, connection, topology)

    refused = CliRunner().invoke(main, ["review", "approve", held["BIG-1"], "--by", "Sam Lee"])

    assert refused.exit_code == 2, refused.output
    assert "refused" in refused.output and "reached the MES" in refused.output
    with review_store(settings) as store:  # the review store answers at once; DuckDB gets it with the next run
        assert store.item(held["BIG-1"])["status"] == "resolved"
        trail = [(a["action"], a["actor"], a["note"]) for a in store.trail(held["BIG-1"])]
    assert [(a, who) for a, who, _ in trail] == [("held", "auto:erp_wins_receipts_and_shipments"),
                                                 ("resolved", "supervisor:Sam Lee")]  # fmt: skip
    assert trail[-1][2].startswith("approval refused: every movement it names has reached the MES")

    # The other one is closed by the next hourly run, without anybody asking.
    reconcile_with_corrections(key_of(next_hour))
    assert _query(settings, "SELECT status FROM recon.corrections WHERE correction_id = ?", [held["BIG-1"]]) == [
        ("resolved",)
    ]
    copied = _query(settings, "SELECT action, actor FROM recon.correction_audit_log WHERE correction_id = ? "
                              "ORDER BY logged_at", [held["BIG-1"]])  # fmt: skip
    assert copied == [("held", "auto:erp_wins_receipts_and_shipments"), ("resolved", "supervisor:Sam Lee")]
    assert _query(settings, "SELECT status, decided_by FROM recon.corrections WHERE correction_id = ?",
                  [held["BIG-2"]]) == [("resolved", "auto:hourly")]  # fmt: skip
    for material, movement in late.items():
        assert _applied_times(mes, movement.transaction_id) == 1
        assert _mes_stock(mes, material) == _erp_stock(erp, material) == Decimal("1600")


def test_a_late_movement_staged_after_its_hour_was_reconciled_leaves_that_hours_check_unchanged(
    settings, topology, connection, plant
):
    erp, mes = plant
    hour = hour_ago(3)
    erp_posts_and_publishes(settings, erp, [event(material_number="M-RERUN", quantity="100",
                                                  timestamp=stamp(hour, 5))])  # fmt: skip
    late = parse_event(event(material_number="M-RERUN", quantity="7", timestamp=stamp(hour, 30)))
    erp.post(late)
    settle(settings, connection, topology)
    _window(24 * 60)
    reconcile(key_of(hour))
    first = _query(settings, "SELECT * FROM recon.variances ORDER BY ALL")
    findings = _query(settings, "SELECT * FROM recon.variance_investigation ORDER BY ALL")

    with Outbox(settings) as box:  # it arrives after the hour was reconciled
        box.publish([late])
    settle(settings, connection, topology)
    reconcile(key_of(hour))  # a re-run, as a backfill would

    assert _query(settings, "SELECT * FROM recon.variances ORDER BY ALL") == first
    assert _query(settings, "SELECT * FROM recon.variance_investigation ORDER BY ALL") == findings
    # The ledger has it all the same: analysts see every movement of the hour.
    assert _query(settings, "SELECT count(*) FROM ledger.transaction_ledger WHERE material_number = 'M-RERUN'") == [
        (1,)
    ]
    assert _query(settings, "SELECT sum(transaction_count) FROM ledger.transaction_ledger "
                            "WHERE material_number = 'M-RERUN'") == [(2,)]  # fmt: skip


def _lose_stock_without_a_record(tmp_path, material: str, hour, quantity: Decimal) -> None:
    """Stock that left the MES with nothing recorded (theft, damage nobody booked)."""
    micro = int(quantity * 10**6)
    with sqlite3.connect(tmp_path / "mes.sqlite") as db:
        (before,) = db.execute("SELECT quantity_micro FROM stock WHERE material_number = ?", (material,)).fetchone()
        db.execute("UPDATE stock SET quantity_micro = ? WHERE material_number = ?", (before - micro, material))
        db.execute("INSERT INTO movements VALUES (-1, 'WH01/RM01', ?, 'KG', ?, ?, ?)",
                   (material, (hour + timedelta(minutes=40)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"), before,
                    before - micro))  # fmt: skip


def test_a_difference_no_movement_explains_is_held_as_a_request_for_a_physical_count(
    settings, topology, connection, plant, tmp_path
):
    erp, mes = plant
    hour = hour_ago(3)
    erp_posts_and_publishes(settings, erp, [event(material_number="M-GONE", quantity="100",
                                                  timestamp=stamp(hour, 5))])  # fmt: skip
    settle(settings, connection, topology)
    _lose_stock_without_a_record(tmp_path, "M-GONE", hour, Decimal("2"))

    reconcile_with_corrections(key_of(hour))

    assert _findings(settings, hour, "M-GONE") == [("MES", "unexplained", False, Decimal("2"), [])]
    ((method, status, note),) = _query(settings, "SELECT method, status, note FROM recon.corrections")
    assert (method, status) == ("count", "held_for_review")
    assert "count the stock of M-GONE at WH01/RM01" in note
    assert _mes_stock(mes, "M-GONE") == Decimal("98")  # nothing was posted


def test_an_adjustment_compensates_a_movement_and_its_late_original_is_not_applied(
    settings, topology, connection, plant
):
    erp, mes = plant
    hour, next_hour = hour_ago(3), hour_ago(2)
    erp_posts_and_publishes(settings, erp, [event(material_number="M-WIP", quantity="1000",
                                                  timestamp=stamp(hour, 5))])  # fmt: skip
    # Production consumption booked in the ERP and never sent: the rules say the MES is right for
    # consumption, so the correction undoes it in the ERP (an adjustment), not in the MES.
    consumed = parse_event(event(material_number="M-WIP", transaction_type="issue", reason="production_consumption",
                                 movement_type="261", quantity="15", timestamp=stamp(hour, 20)))  # fmt: skip
    erp.post(consumed)
    settle(settings, connection, topology)
    _window(0)
    reconcile_with_corrections(key_of(hour))

    ((cid, method, target, quantity, status),) = _query(
        settings, "SELECT correction_id, method, target_system, quantity, status FROM recon.corrections"
    )
    assert (method, target, quantity, status) == ("adjust", "ERP", Decimal("15"), "applied")
    settle(settings, connection, topology)
    assert _erp_stock(erp, "M-WIP") == _mes_stock(mes, "M-WIP") == Decimal("1000")

    # The original comes after all: the correction stands for it, so the worker does not apply it.
    with Outbox(settings) as box:
        box.publish([consumed])
    settle(settings, connection, topology)

    assert _applied_times(mes, consumed.transaction_id) == 0
    assert _erp_stock(erp, "M-WIP") == _mes_stock(mes, "M-WIP") == Decimal("1000")
    from invsync_pipeline.sync.sync_log import SyncLog

    log = {r.transaction_id: r.status for r in SyncLog(settings.home / "sync.sqlite").records()}
    assert log[consumed.transaction_id] == "compensated"
    reconcile_with_corrections(key_of(next_hour))
    assert _query(settings, "SELECT count(*) FROM recon.corrections") == [(1,)]
    assert _query(settings, "SELECT count(*) FROM recon.variances WHERE partition_hour = ? AND is_variance",
                  [next_hour]) == [(0,)]  # fmt: skip
    assert cid.startswith("RECON-")
