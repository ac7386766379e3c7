"""staged_inventory_events and transaction_ledger against figures computed by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event, publish_events

# A recent day: timestamps older than the contract's horizon (400 days) are refused, so a
# fixed date would make these tests fail as the calendar moves on.
DAY = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()

pytestmark = pytest.mark.broker

HOUR = f"{DAY}-10:00"
RM01, RM02 = "WH01/RM01", "WH01/RM02"


def _hour_events() -> list[dict]:
    a = {"material_number": "MAT-A", "location": RM01}
    receipt = event(**a, quantity="100", timestamp=f"{DAY}T10:05:00Z")
    return [
        receipt,
        receipt,  # delivered twice: counted once
        event(**a, quantity="50", timestamp=f"{DAY}T11:10:00+01:00"),  # 10:10 UTC
        event(**a, transaction_type="issue", reason="production_consumption", movement_type="261",
              quantity="30", timestamp=f"{DAY}T10:20:00Z"),
        event(**a, transaction_type="transfer", reason="stock_transfer", movement_type="311",
              quantity="20", to_location=RM02, timestamp=f"{DAY}T10:30:00Z"),
        event(**a, transaction_type="adjustment", reason="correction", movement_type="702",
              quantity="-5", timestamp=f"{DAY}T10:40:00Z"),
        event(**a, transaction_type="cycle_count", reason="physical_inventory", movement_type=None,
              quantity="90", timestamp=f"{DAY}T10:50:00Z"),
        event(**a, transaction_type="cycle_count", reason="physical_inventory", movement_type=None,
              quantity="95", timestamp=f"{DAY}T10:55:00Z"),
        event(**a, source_system="MES", transaction_type="issue", reason="production_consumption",
              movement_type="261", quantity="7", timestamp=f"{DAY}T10:59:59.999Z"),
        event(**a, source_system="RECON", target_system="MES", transaction_type="adjustment",
              reason="correction", movement_type="701", quantity="3", timestamp=f"{DAY}T10:45:00Z"),
        event(**a, quantity="1000", timestamp=f"{DAY}T11:00:00Z"),  # next hour: not in this one
    ]  # fmt: skip


def _ledger(settings) -> dict[tuple, dict]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        cur = conn.execute(f"SELECT * FROM ledger.transaction_ledger WHERE partition_hour = '{DAY} 10:00:00+00'")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return {(r["location"], r["source_system"], r["target_system"]): r for r in rows}


def _materialize() -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [staged_inventory_events, transaction_ledger],
        partition_key=HOUR,
        resources={"invsync": InvsyncResource(), "warehouse": WarehouseResource()},
    )


def test_the_ledger_matches_figures_computed_by_hand(settings, topology, connection):
    publish_events(connection, topology.exchange, _hour_events())
    drain_ledger_tap(settings)

    result = _materialize()

    assert result.success
    staged_meta = result.asset_materializations_for_node("staged_inventory_events")[0].metadata
    assert staged_meta["events"].value == 9 and staged_meta["duplicates_dropped"].value == 1
    ledger = _ledger(settings)
    assert set(ledger) == {(RM01, "ERP", None), (RM02, "ERP", None), (RM01, "MES", None), (RM01, "RECON", "MES")}
    erp = ledger[(RM01, "ERP", None)]
    assert (erp["receipts"], erp["issues"], erp["transfers_out"], erp["adjustments"]) == (150, 30, 20, -5)
    assert erp["net_movement"] == Decimal("95")  # 150 - 30 - 20 - 5
    assert erp["last_counted_balance"] == 95
    assert (erp["receipt_count"], erp["issue_count"], erp["transfer_out_count"], erp["adjustment_count"],
            erp["cycle_count_count"], erp["transaction_count"]) == (2, 1, 1, 1, 2, 7)  # fmt: skip
    rm02 = ledger[(RM02, "ERP", None)]
    assert (rm02["transfers_in"], rm02["net_movement"], rm02["transaction_count"]) == (20, 20, 1)
    assert ledger[(RM01, "MES", None)]["net_movement"] == -7
    assert ledger[(RM01, "RECON", "MES")]["net_movement"] == 3


def test_rematerializing_an_hour_gives_the_same_tables(settings, topology, connection):
    publish_events(connection, topology.exchange, _hour_events())
    drain_ledger_tap(settings)
    assert _materialize().success
    first = _ledger(settings)

    assert _materialize().success

    assert _ledger(settings) == first
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM staging.inventory_events").fetchone()[0] == 9


def test_a_range_run_stages_each_id_once_across_hours_like_hour_by_hour_runs(settings):
    from invsync_pipeline.messaging.staged_log import StagedEventLog

    def line(tx: str, ts: str) -> str:
        body = event(transaction_id=tx, timestamp=ts)
        return json.dumps({**body, "received_at": ts, "routing_key": "inventory.wh01.raw.receipt"})

    log = StagedEventLog(settings.staged_dir)
    log.write_events({f"{DAY}-09:00": [line("DUP-2", f"{DAY}T09:10:00Z")]}, "0001-a")
    log.write_events({f"{DAY}-10:00": [line("DUP-1", f"{DAY}T10:10:00Z"), line("T-10", f"{DAY}T10:20:00Z")],
                      f"{DAY}-11:00": [line("DUP-1", f"{DAY}T11:10:00Z"), line("T-11", f"{DAY}T11:20:00Z")],
                      f"{DAY}-12:00": [line("DUP-2", f"{DAY}T12:10:00Z")]}, "0002-b")  # fmt: skip
    resources = {"invsync": InvsyncResource(), "warehouse": WarehouseResource()}
    # 09:00 was staged before (say, live); then 10:00-12:00 are backfilled in one run.
    assert dg.materialize([staged_inventory_events], partition_key=f"{DAY}-09:00", resources=resources).success
    whole = {"dagster/asset_partition_range_start": f"{DAY}-10:00",
             "dagster/asset_partition_range_end": f"{DAY}-12:00"}  # fmt: skip
    result = dg.materialize([staged_inventory_events], tags=whole, resources=resources)
    assert result.success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        rows = conn.execute(
            "SELECT transaction_id, strftime(partition_hour, '%H') FROM staging.inventory_events ORDER BY ALL"
        ).fetchall()
    # The earliest hour of the range keeps DUP-1; the copy staged before the range keeps DUP-2.
    assert rows == [("DUP-1", "10"), ("DUP-2", "09"), ("T-10", "10"), ("T-11", "11")]


def test_an_hour_stages_the_same_rows_from_parquet_twins_as_from_json_lines(settings, topology, connection):
    publish_events(connection, topology.exchange, _hour_events())
    drain_ledger_tap(settings)
    folder = settings.staged_dir / "events" / f"{DAY}T10"
    twins = sorted(folder.glob("*.parquet"))
    assert twins and len(twins) == len(list(folder.glob("*.jsonl")))  # the drain wrote one per segment

    def staged() -> list[tuple]:
        assert _materialize().success
        with open_warehouse(settings.warehouse_path, read_only=True) as conn:
            return conn.execute("SELECT * FROM staging.inventory_events ORDER BY ALL").fetchall()

    from_twins = staged()
    for twin in twins:  # a segment older than twins, or a crash before its twin: read as JSON Lines
        twin.unlink()
    from_json_lines = staged()

    assert from_twins == from_json_lines
    assert len(from_twins) == 9


def test_invsync_staged_columnar_writes_the_twins_segments_lack_and_staging_reads_them(settings):
    from click.testing import CliRunner

    from invsync_pipeline.cli import main
    from invsync_pipeline.messaging.staged_log import StagedEventLog

    # Segments as an older drain left them: JSON Lines only.
    lines = [json.dumps({**body, "received_at": body["timestamp"], "routing_key": "inventory.wh01.raw.receipt"})
             for body in _hour_events()[:-1]]  # fmt: skip
    StagedEventLog(settings.staged_dir).write_events({HOUR: lines[:4]}, "0001-a")
    StagedEventLog(settings.staged_dir).write_events({HOUR: lines[4:]}, "0002-b")
    assert _materialize().success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        from_json_lines = conn.execute("SELECT * FROM staging.inventory_events ORDER BY ALL").fetchall()

    result = CliRunner().invoke(main, ["staged", "columnar"])

    assert result.exit_code == 0, result.output
    assert "wrote 2 Parquet twins" in result.output
    assert _materialize().success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        assert conn.execute("SELECT * FROM staging.inventory_events ORDER BY ALL").fetchall() == from_json_lines
        assert len(from_json_lines) == 9
