"""The hourly reconciliation end to end: ERP tables, reference MES, broker, worker, drain, DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pika
import pytest

from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.resources import WarehouseResource
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event
from invsync_pipeline_tests.recon_plant import (
    erp_posts_and_publishes,
    plant_fixture,  # noqa: F401 - the `plant` fixture
    reconcile,
    reconcile_with_corrections,
    settle,
)

pytestmark = pytest.mark.broker


def test_each_kind_of_discrepancy_is_detected_with_its_cause(settings, topology, connection, plant):
    erp, mes = plant
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    key = hour.strftime("%Y-%m-%d-%H:00")
    at = (hour + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    clean = event(material_number="CLEAN", quantity="100", timestamp=at)
    consumed = event(material_number="CLEAN", transaction_type="issue", reason="production_consumption",
                     movement_type="261", quantity="15", timestamp=at)  # fmt: skip
    never_sent = event(material_number="NEVER-SENT", quantity="50", timestamp=at)
    lost = event(material_number="LOST", quantity="30", timestamp=at)
    wip_base = event(material_number="WIP-1", quantity="40", timestamp=at)

    erp_posts_and_publishes(settings, erp, [clean, consumed, wip_base])
    erp.post(parse_event(never_sent))  # booked in the ERP, never published
    erp.post(parse_event(lost))  # booked and published to the ledger tap only: the MES never sees it
    channel = connection.channel()
    channel.basic_publish("", topology.ledger_tap, parse_event(lost).to_body(), pika.BasicProperties(delivery_mode=2))
    # MES consumption that the ERP never books.
    mes.backflush(material_number="WIP-1", material_type="raw", location="WH01/RM01", quantity=Decimal("12"),
                  unit="KG", order="PO-1", timestamp=hour + timedelta(minutes=20))  # fmt: skip
    settle(settings, connection, topology)

    reconcile(key)

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        variances = conn.execute(
            "SELECT material_number, cross_difference, erp_three_way, mes_three_way FROM recon.variances "
            "WHERE is_variance ORDER BY 1"
        ).fetchall()
        causes = conn.execute(
            "SELECT material_number, system, cause, explained_quantity, transaction_ids "
            "FROM recon.variance_investigation ORDER BY 1"
        ).fetchall()
    assert [v[0] for v in variances] == ["LOST", "NEVER-SENT", "WIP-1"]  # CLEAN agrees
    assert causes == [
        ("LOST", "MES", "missing_in_mes", Decimal("30"), [lost["transaction_id"]]),
        ("NEVER-SENT", "MES", "not_published", Decimal("50"), [never_sent["transaction_id"]]),
        ("WIP-1", "ERP", "missing_in_erp", Decimal("-12"), [causes[2][4][0]]),
    ]
    assert causes[2][4][0].startswith("MES-")


def test_rerunning_an_hour_changes_nothing(settings, topology, connection, plant):
    erp, mes = plant
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    at = (hour + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    erp_posts_and_publishes(settings, erp, [event(material_number=f"M-{i}", quantity="5", timestamp=at)
                                             for i in range(5)])  # fmt: skip
    erp.post(parse_event(event(material_number="M-9", quantity="9", timestamp=at)))
    settle(settings, connection, topology)
    key = hour.strftime("%Y-%m-%d-%H:00")

    def tables():
        with open_warehouse(settings.warehouse_path, read_only=True) as conn:
            snapshots = [conn.execute(f"SELECT * EXCLUDE (taken_at) FROM {t} ORDER BY ALL").fetchall()
                         for t in ("snapshots.erp_inventory", "snapshots.mes_inventory")]  # fmt: skip
            tables = ("recon.variances", "recon.variance_investigation", "ledger.transaction_ledger")
            recon = [conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables]
        return snapshots + recon

    reconcile(key)
    first = tables()
    reconcile(key)

    assert tables() == first
    assert len(first[2]) == 6 and sum(1 for row in first[2] if row[-1]) == 1


def test_corrections_fix_the_wrong_system_hold_critical_ones_and_the_next_hour_agrees(
    settings, topology, connection, plant
):
    from click.testing import CliRunner

    from invsync_pipeline.cli import main

    erp, mes = plant
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    key, next_key = hour.strftime("%Y-%m-%d-%H:00"), (hour + timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")
    at = lambda minutes: (hour + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    materials = ["LOST", "NEVER-SENT", "WIP-1", "BIG"]
    erp_posts_and_publishes(settings, erp, [event(material_number=m, quantity="1000", timestamp=at(5))
                                             for m in materials])  # fmt: skip
    lost, big = event(material_number="LOST", quantity="30", timestamp=at(10)), event(
        material_number="BIG", quantity="600", timestamp=at(10))  # fmt: skip
    channel = connection.channel()
    for e in (lost, big):  # booked in the ERP, reach the ledger but never the MES
        erp.post(parse_event(e))
        channel.basic_publish("", topology.ledger_tap, parse_event(e).to_body(), pika.BasicProperties(delivery_mode=2))
    erp.post(parse_event(event(material_number="NEVER-SENT", quantity="50", timestamp=at(10))))
    mes.backflush(material_number="WIP-1", material_type="raw", location="WH01/RM01", quantity=Decimal("12"),
                  unit="KG", order="PO-7", timestamp=hour + timedelta(minutes=20))  # fmt: skip
    settle(settings, connection, topology)

    reconcile_with_corrections(key)

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        corrections = conn.execute(
            "SELECT material_number, target_system, quantity, status, rule, correction_id FROM recon.corrections "
            "ORDER BY material_number"
        ).fetchall()
        from invsync_pipeline.ops.alerts import alerts as stored_alerts

        alerts = [(a["severity"], a["kind"], a["subject"]) for a in stored_alerts(settings)]
        audit = conn.execute("SELECT count(*) FROM recon.correction_audit_log").fetchone()[0]
    assert [c[:5] for c in corrections] == [
        ("BIG", "MES", Decimal("600"), "held_for_review", "erp_wins_receipts_and_shipments"),
        ("LOST", "MES", Decimal("30"), "applied", "erp_wins_receipts_and_shipments"),
        ("NEVER-SENT", "MES", Decimal("50"), "applied", "erp_wins_receipts_and_shipments"),
        ("WIP-1", "ERP", Decimal("-12"), "applied", "mes_wins_wip_consumption"),
    ]
    assert len(alerts) == 1 and alerts[0][0] == "critical" and "BIG" in alerts[0][2]
    assert audit == 4

    big_id = corrections[0][5]
    runner = CliRunner()
    assert runner.invoke(main, ["review", "approve", big_id, "--by", ""]).exit_code == 2  # nobody decided
    approved = runner.invoke(main, ["review", "approve", big_id, "--by", "Sam Lee", "--effective-at", "next-hour"])
    assert approved.exit_code == 0, approved.output
    again = runner.invoke(main, ["review", "approve", big_id, "--by", "Sam Lee"])
    assert again.exit_code == 2 and "not waiting for review" in again.output

    reconcile_with_corrections(key)  # re-running the hour decides nothing new, and applies the approval
    settle(settings, connection, topology)
    reconcile_with_corrections(next_key)

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM recon.corrections").fetchone()[0] == 4
        left = conn.execute(
            "SELECT material_number, cross_difference FROM recon.variances WHERE partition_hour = ? AND is_variance",
            [hour + timedelta(hours=1)],
        ).fetchall()
        actions = conn.execute("SELECT action, actor FROM recon.correction_audit_log ORDER BY logged_at").fetchall()
    assert left == []  # after the corrections, both systems agree on the next hour
    assert ("approved", "supervisor:Sam Lee") in actions
    # Analysts read the exported Parquet files, never the file a run is writing.
    import duckdb

    exported = (
        duckdb.connect()
        .execute(f"SELECT count(*) FROM read_parquet('{settings.home}/exports/recon.corrections/*/*.parquet')")
        .fetchone()[0]
    )
    assert exported == 4


def _causes_of(settings, hour: datetime, material: str) -> list[tuple]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return conn.execute(
            "SELECT system, cause, explained_quantity, transaction_ids, detail FROM recon.variance_investigation "
            "WHERE partition_hour = ? AND material_number = ? ORDER BY cause",
            [hour, material],
        ).fetchall()


def _booked(settings, table: str, transaction_id: str) -> list[Decimal]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return [row[0] for row in conn.execute(
            f"SELECT quantity_effect FROM {table} WHERE transaction_id = ?", [transaction_id]
        ).fetchall()]  # fmt: skip


def _count_then_lose_a_receipt(settings, topology, connection, erp, material: str, counted: str, hour: datetime):
    """Stock of 100 in both systems, a cycle count of `counted` that both apply, then a receipt the
    MES never gets: the key has a variance, and the count is in the MES's applied log."""
    at = lambda minutes: (hour + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    erp_posts_and_publishes(settings, erp, [event(material_number=material, quantity="100", timestamp=at(5))])
    settle(settings, connection, topology)  # the count goes through another queue: apply the receipt first
    count = event(material_number=material, transaction_type="cycle_count", reason="physical_inventory",
                  movement_type=None, quantity=counted, timestamp=at(10))  # fmt: skip
    erp_posts_and_publishes(settings, erp, [count])
    lost = event(material_number=material, quantity="30", timestamp=at(20))
    erp.post(parse_event(lost))  # booked and published to the ledger tap only: the MES never sees it
    connection.channel().basic_publish("", topology.ledger_tap, parse_event(lost).to_body(),
                                       pika.BasicProperties(delivery_mode=2))  # fmt: skip
    settle(settings, connection, topology)
    return count["transaction_id"], lost["transaction_id"]


def test_a_cycle_count_in_the_mes_log_is_not_blamed_on_the_erp(settings, topology, connection, plant):
    erp, _ = plant
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    # The count agrees with the ERP's book, so the ERP posts no document; the MES logs it.
    count_id, lost_id = _count_then_lose_a_receipt(settings, topology, connection, erp, "COUNTED", "100", hour)

    reconcile(hour.strftime("%Y-%m-%d-%H:00"))

    assert _booked(settings, "snapshots.mes_applied", count_id) == [Decimal("0")]
    assert _booked(settings, "snapshots.erp_movements", count_id) == []
    assert [c[:4] for c in _causes_of(settings, hour, "COUNTED")] == [
        ("MES", "missing_in_mes", Decimal("30"), [lost_id]),
    ]


def test_a_count_difference_booked_in_both_systems_is_not_reported_as_unpublished(
    settings, topology, connection, plant
):
    erp, _ = plant
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    # The count finds 5 less: the ERP books a 702 document and the MES its change, both under the count's id.
    count_id, lost_id = _count_then_lose_a_receipt(settings, topology, connection, erp, "COUNTED-SHORT", "95", hour)

    reconcile(hour.strftime("%Y-%m-%d-%H:00"))

    assert _booked(settings, "snapshots.mes_applied", count_id) == [Decimal("-5")]
    assert _booked(settings, "snapshots.erp_movements", count_id) == [Decimal("-5")]
    assert [c[:4] for c in _causes_of(settings, hour, "COUNTED-SHORT")] == [
        ("MES", "missing_in_mes", Decimal("30"), [lost_id]),
    ]  # and no `unexplained` row for the -5 the ERP side would otherwise not explain


def test_a_correction_within_the_hour_is_carried_over_not_unexplained(settings, topology, connection, plant):
    erp, _ = plant
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    earlier, hour = now - timedelta(hours=6), now - timedelta(hours=5)
    at = lambda h, minutes: (h + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    erp_posts_and_publishes(settings, erp, [event(material_number=m, quantity="1000", timestamp=at(earlier, 5))
                                             for m in ("HELD", "FIXED")])  # fmt: skip
    # An earlier hour: receipts the MES never got, so both materials begin the hour apart.
    channel = connection.channel()
    for material, quantity in (("HELD", "30"), ("HELD", "50"), ("FIXED", "30")):
        lost = parse_event(event(material_number=material, quantity=quantity, timestamp=at(earlier, 10)))
        erp.post(lost)
        channel.basic_publish("", topology.ledger_tap, lost.to_body(), pika.BasicProperties(delivery_mode=2))
    # This hour: RECON corrections of the MES, posted within the hour. HELD's 50 still waits for
    # review; FIXED is corrected whole but loses a new receipt.
    corrections = [parse_event(event(material_number=m, source_system="RECON", target_system="MES",
                                     transaction_type="adjustment", reason="correction", movement_type="701",
                                     quantity="30", timestamp=at(hour, 10)))
                   for m in ("HELD", "FIXED")]  # fmt: skip
    with Outbox(settings) as box:
        box.publish(corrections)
    lost = parse_event(event(material_number="FIXED", quantity="20", timestamp=at(hour, 20)))
    erp.post(lost)
    channel.basic_publish("", topology.ledger_tap, lost.to_body(), pika.BasicProperties(delivery_mode=2))
    settle(settings, connection, topology)

    reconcile(hour.strftime("%Y-%m-%d-%H:00"))

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        begun = conn.execute(
            "SELECT material_number, erp_begin - mes_begin, cross_difference FROM recon.variances "
            "WHERE partition_hour = ? AND is_variance ORDER BY 1",
            [hour],
        ).fetchall()
    assert begun == [("FIXED", Decimal("30"), Decimal("20")), ("HELD", Decimal("80"), Decimal("50"))]
    assert _causes_of(settings, hour, "HELD") == [
        ("MES", "carried_over", Decimal("50"), [],
         "the systems already disagreed when the hour began; less the RECON corrections of the hour"),
    ]  # fmt: skip
    assert [c[:4] for c in _causes_of(settings, hour, "FIXED")] == [
        ("MES", "missing_in_mes", Decimal("20"), [lost.transaction_id]),
    ]


def test_a_difference_worth_millions_is_valued_not_an_overflow(tmp_path):
    from datetime import UTC, datetime

    from invsync_pipeline.warehouse import connect_warehouse, sql

    hour = datetime(2025, 3, 3, 10, tzinfo=UTC)
    conn = connect_warehouse(tmp_path / "w.duckdb")
    try:
        conn.execute("INSERT INTO snapshots.erp_inventory VALUES (?, 'M1', 'raw', 'WH01/RM01', 'KG', 500000, 500000, "
                     "now(), 'test')", [hour])  # fmt: skip
        conn.execute("INSERT INTO snapshots.mes_inventory VALUES (?, 'M1', 'WH01/RM01', 'KG', 0, 0, now(), 'test')",
                     [hour])  # fmt: skip
        conn.execute("INSERT INTO snapshots.erp_materials VALUES ('M1', 'raw', 'KG', 2.5, 'EUR', 'A', now())")
        conn.execute(f"INSERT INTO recon.variances {sql('recon/variances')}", {"first_hour": hour, "last_hour": hour})
        value = conn.execute("SELECT value_difference FROM recon.variances").fetchone()[0]
    finally:
        conn.close()
    assert value == 1_250_000


def test_a_chunk_across_midnight_keeps_each_days_pilot_scope(tmp_path):
    """A ranged run checks many hours in one statement; the pilot scope still applies per day."""
    from invsync_pipeline.assets.variances import _inventory_variances_hours
    from invsync_pipeline.settings import load_settings

    settings = load_settings(
        home=str(tmp_path),
        cutover={"pilot": [{"since": "2025-03-03", "material_types": ["mro"]},
                           {"since": "2025-03-04", "material_types": ["mro", "raw"]}]},
    )  # fmt: skip
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    hours = [datetime(2025, 3, 3, 22, tzinfo=UTC) + timedelta(hours=h) for h in range(4)]  # 22:00 .. 01:00
    with warehouse.connect() as conn:
        conn.execute("INSERT INTO snapshots.erp_materials VALUES ('M-RAW', 'raw', 'KG', 1, 'EUR', 'A', now()), "
                     "('M-MRO', 'mro', 'EA', 1, 'EUR', 'C', now())")  # fmt: skip
        for hour in hours:
            conn.execute("INSERT INTO snapshots.erp_inventory VALUES (?, 'M-RAW', 'raw', 'WH01/RM01', 'KG', 5, 5, "
                         "now(), 'test'), (?, 'M-MRO', 'mro', 'WH01/MR01', 'EA', 1, 1, now(), 'test')",
                         [hour, hour])  # fmt: skip
    _inventory_variances_hours([f"{hour:%Y-%m-%d-%H:%M}" for hour in hours], settings, warehouse)
    with warehouse.connect() as conn:
        rows = conn.execute("SELECT hour(partition_hour), list(material_type ORDER BY material_type) "
                            "FROM recon.variances GROUP BY ALL ORDER BY min(partition_hour)").fetchall()  # fmt: skip
    assert rows == [(22, ["mro"]), (23, ["mro"]), (0, ["mro", "raw"]), (1, ["mro", "raw"])]
