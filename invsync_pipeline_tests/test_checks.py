"""The asset checks on a real DuckDB file: a clean hour passes, each kind of bad data fails as it should."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.checks.asset_checks import (
    ASSET_CHECKS,
    SnapshotCheckConfig,
    erp_snapshot_valid,
    inventory_accuracy,
    ledger_consistent,
    mes_snapshot_valid,
    staged_events_valid,
)
from invsync_pipeline.messaging.staged_log import StagedEventLog, new_segment_id
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.settings import ConfigError, load_settings
from invsync_pipeline.warehouse import open_warehouse, sql
from invsync_pipeline_tests.factories import event

HOUR = datetime(2026, 11, 24, 10, tzinfo=UTC)
HOUR_KEY = "2026-11-24-10:00"
RM01, RM02, FG01 = "WH01/RM01", "WH01/RM02", "WH01/FG01"

# (transaction_id, minute, source, target, material, type, transaction_type, reason, qty, unit, location, to)
CLEAN_EVENTS = [
    ("t-receipt", 5, "ERP", None, "MAT-A", "raw", "receipt", "purchase_receipt", 100, "KG", RM01, None),
    ("t-issue", 10, "MES", None, "MAT-A", "raw", "issue", "production_consumption", 30, "KG", RM01, None),
    ("t-transfer", 20, "ERP", None, "MAT-A", "raw", "transfer", "stock_transfer", 20, "KG", RM01, RM02),
    ("t-adjust", 30, "ERP", None, "MAT-A", "raw", "adjustment", "correction", -5, "KG", RM01, None),
    ("t-recon", 40, "RECON", "MES", "MAT-A", "raw", "adjustment", "correction", 3, "KG", RM01, None),
    ("t-count", 50, "MES", None, "MAT-F", "finished", "cycle_count", "physical_inventory", 12, "EA", FG01, None),
]  # fmt: skip


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> WarehouseResource:
    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INVSYNC_ACCURACY_GOAL", raising=False)
    resource = WarehouseResource()  # resolves to warehouse.duckdb under INVSYNC_HOME
    with open_warehouse(resource.resolved_path()):  # creates the tables
        pass
    return resource


def _execute(warehouse: WarehouseResource, statement: str, params=None) -> None:
    with warehouse.connect() as conn:
        conn.execute(statement, params or [])


def _stage(warehouse: WarehouseResource, events, hour: datetime = HOUR) -> None:
    rows = [
        (hour, tid, hour + timedelta(minutes=minute), source, target, material, mtype, ttype, reason, qty, unit,
         loc, to, f"DOC-{tid}", None, None, hour + timedelta(minutes=minute, seconds=1),
         f"inventory.wh01.{mtype}.{ttype}", "seg-1")
        for tid, minute, source, target, material, mtype, ttype, reason, qty, unit, loc, to in events
    ]  # fmt: skip
    with warehouse.connect() as conn:
        conn.executemany(f"INSERT INTO staging.inventory_events VALUES ({', '.join(['?'] * 19)})", rows)


def _build_ledger(warehouse: WarehouseResource, hour: datetime = HOUR) -> None:
    """The ledger of the hour, built by the pipeline's own SQL from the staged rows."""
    with warehouse.connect() as conn:
        conn.execute(
            f"INSERT INTO ledger.transaction_ledger {sql('ledger/transaction_ledger')}",
            {"first_hour": hour, "last_hour": hour},
        )


def _snapshots(warehouse: WarehouseResource, erp_overrides=None, mes_overrides=None, hour: datetime = HOUR) -> None:
    stock = {  # (material, location, unit): (type, begin, end)
        ("MAT-A", RM01, "KG"): ("raw", 50, 98),
        ("MAT-A", RM02, "KG"): ("raw", 0, 20),
        ("MAT-F", FG01, "EA"): ("finished", 10, 12),
        ("MAT-W", RM01, "EA"): ("wip", 5, 5),
    }
    with warehouse.connect() as conn:
        conn.executemany(
            "INSERT INTO snapshots.erp_materials VALUES (?, ?, 'KG', 2.5, 'EUR', 'A', ?)",
            [("MAT-A", "raw", hour), ("MAT-F", "finished", hour), ("MAT-W", "wip", hour)],
        )
        for table, overrides, method in (
            ("erp_inventory", erp_overrides, "as_of_reconstruction"),
            ("mes_inventory", mes_overrides, "as_of_api"),
        ):
            rows = {**stock, **(overrides or {})}
            for (material, location, unit), (mtype, begin, end) in rows.items():
                columns = "(?, ?, ?, ?, ?, ?, ?, ?, ?)" if table == "erp_inventory" else "(?, ?, ?, ?, ?, ?, ?, ?)"
                values = [hour, material, mtype, location, unit, begin, end, hour, method]
                if table == "mes_inventory":
                    values.pop(2)
                conn.execute(f"INSERT INTO snapshots.{table} VALUES {columns}", values)


def _variances(warehouse: WarehouseResource, rows: int, variances: int, hour: datetime = HOUR) -> None:
    values = [
        (hour, f"MAT-{i:04d}", "raw", "A", RM01, "WH01", "KG", "KG", 10, 0, 10, 10, 0, 10, 0, 10,
         10 if i >= variances else 9, 0, 0 if i >= variances else 1, 0 if i >= variances else 1,
         None, 2.5, None, 0, i < variances)
        for i in range(rows)
    ]  # fmt: skip
    with warehouse.connect() as conn:
        conn.executemany(f"INSERT INTO recon.variances VALUES ({', '.join(['?'] * 25)})", values)


def _clean_hour(warehouse: WarehouseResource) -> None:
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    _snapshots(warehouse)
    _variances(warehouse, rows=200, variances=0)


def _check(check, warehouse: WarehouseResource, **kwargs) -> dg.AssetCheckResult:
    """Calls a check as Dagster University's tests do; without a partition it takes the latest hour."""
    if check is inventory_accuracy:
        kwargs.setdefault("invsync", InvsyncResource())  # the goal comes from the settings
    return check(dg.build_asset_check_context(), warehouse=warehouse, **kwargs)


def _failed_expectations(result: dg.AssetCheckResult) -> list[str]:
    summary = result.metadata["expectation_results"].value
    return [f"{r['expectation']}:{r['column']}" for r in summary["results"] if not r["success"]]


def test_a_clean_hour_passes_every_check(warehouse):
    _clean_hour(warehouse)

    for check in (staged_events_valid, ledger_consistent, erp_snapshot_valid, mes_snapshot_valid, inventory_accuracy):
        result = _check(check, warehouse)
        assert result.passed, (check, result.metadata.get("failures"))
        assert result.metadata["hour"].value == HOUR_KEY
    ledger = _check(ledger_consistent, warehouse)
    assert ledger.metadata["staged_movements"].value == len(CLEAN_EVENTS) + 1  # the transfer counts twice
    assert ledger.metadata["ledger_movements"].value == len(CLEAN_EVENTS) + 1


def test_the_checks_are_exported_and_only_staging_and_ledger_block():
    blocking = {spec.asset_key.to_user_string(): spec.blocking for c in ASSET_CHECKS for spec in c.check_specs}
    assert blocking == {
        "staged_inventory_events": True,
        "transaction_ledger": True,
        "erp_inventory_snapshot": False,
        "mes_inventory_snapshot": False,
        "inventory_variances": False,
    }


def test_a_duplicated_transaction_id_fails_the_blocking_staging_check(warehouse):
    _stage(warehouse, [*CLEAN_EVENTS, CLEAN_EVENTS[0]])

    result = _check(staged_events_valid, warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert staged_events_valid.check_specs and all(spec.blocking for spec in staged_events_valid.check_specs)
    assert "expect_column_values_to_be_unique:transaction_id" in _failed_expectations(result)
    assert result.metadata["duplicated_ids_in_table"].value == 1


def test_a_transaction_id_staged_in_an_earlier_hour_too_fails_the_staging_check(warehouse):
    earlier = HOUR - timedelta(hours=1)
    _stage(warehouse, CLEAN_EVENTS[:1], hour=earlier)
    _stage(warehouse, CLEAN_EVENTS)

    result = _check(staged_events_valid, warehouse)

    assert not result.passed  # the hour alone is clean: only the whole-table invariant sees it
    assert _failed_expectations(result) == []
    assert result.metadata["duplicated_ids_in_table"].value == 1
    assert "2026-11-24-09:00, 2026-11-24-10:00" in result.metadata["duplicated_ids"].value


@pytest.mark.parametrize(
    ("bad_event", "failing"),
    [
        (("t-bad", 1, "ERP", None, "MAT-A", "raw", "receipt", "purchase_receipt", 0, "KG", RM01, None),
         "expect_column_values_to_be_between:quantity"),
        (("t-bad", 1, "SAP", None, "MAT-A", "raw", "receipt", "purchase_receipt", 1, "KG", RM01, None),
         "expect_column_values_to_be_in_set:source_system"),
        (("t-bad", 1, "ERP", None, "MAT-A", "raw", "receipt", "gift", 1, "KG", RM01, None),
         "expect_column_values_to_be_in_set:reason"),
        (("t-bad", 1, "ERP", None, "MAT-A", "raw", "transfer", "stock_transfer", 1, "KG", RM01, None),
         "expect_column_values_to_not_be_null:to_location"),
        (("t-bad", 75, "ERP", None, "MAT-A", "raw", "receipt", "purchase_receipt", 1, "KG", RM01, None),
         "expect_column_values_to_be_between:event_time"),
    ],
)  # fmt: skip
def test_an_event_breaking_the_contract_fails_the_staging_check(warehouse, bad_event, failing):
    _stage(warehouse, [*CLEAN_EVENTS, bad_event])

    result = _check(staged_events_valid, warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert _failed_expectations(result) == [failing]


def test_a_ledger_row_with_a_wrong_net_movement_fails(warehouse):
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    _execute(
        warehouse,
        "UPDATE ledger.transaction_ledger SET net_movement = net_movement + 1 "
        "WHERE location = ? AND source_system = 'ERP'",
        [RM01],
    )

    result = _check(ledger_consistent, warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert _failed_expectations(result) == ["expect_column_values_to_be_between:net_movement_residual"]
    assert result.metadata["complete"].value is True


def test_a_ledger_missing_staged_events_fails(warehouse):
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    _execute(warehouse, "DELETE FROM ledger.transaction_ledger WHERE location = ?", [RM02])  # the transfer's in-side

    result = _check(ledger_consistent, warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert _failed_expectations(result) == []
    assert result.metadata["complete"].value is False
    assert result.metadata["ledger_movements"].value == result.metadata["staged_movements"].value - 1


def test_a_negative_raw_stock_warns(warehouse):
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    _snapshots(warehouse, erp_overrides={("MAT-A", RM01, "KG"): ("raw", 50, -3)})

    erp = _check(erp_snapshot_valid, warehouse)
    mes = _check(mes_snapshot_valid, warehouse)

    assert not erp.passed
    assert erp.severity == dg.AssetCheckSeverity.WARN
    assert _failed_expectations(erp) == ["expect_column_values_to_be_between:end_quantity"]
    assert erp.metadata["negative_stock_not_allowed"].value == 1
    assert mes.passed


def test_negative_stock_of_a_type_allowed_to_go_negative_passes_and_is_reported(warehouse):
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    # The MES snapshot has no material type: MAT-W is WIP by the ERP material master.
    _snapshots(warehouse, mes_overrides={("MAT-W", RM01, "EA"): (None, 5, -2)})

    result = _check(mes_snapshot_valid, warehouse)
    stricter = _check(mes_snapshot_valid, warehouse, config=SnapshotCheckConfig(non_negative_material_types=["wip"]))

    assert result.passed
    assert result.metadata["negative_stock_allowed"].value == 1
    assert not stricter.passed
    assert stricter.severity == dg.AssetCheckSeverity.WARN


def test_an_empty_snapshot_of_an_hour_with_movements_fails(warehouse):
    _stage(warehouse, CLEAN_EVENTS)
    _build_ledger(warehouse)
    _snapshots(warehouse)
    _execute(warehouse, "DELETE FROM snapshots.mes_inventory")
    _snapshots(warehouse, hour=HOUR - timedelta(hours=1))  # an older hour, so the table is not empty

    in_process = dg.build_op_context(partition_key=HOUR_KEY)  # a partitioned run of this hour
    result = mes_snapshot_valid(in_process, warehouse=warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert _failed_expectations(result) == ["expect_table_row_count_to_be_between:(table)"]


def test_a_partitioned_run_validates_its_own_hour_not_the_latest(warehouse):
    earlier = HOUR - timedelta(hours=1)
    negative_receipt = ("t-negative", *CLEAN_EVENTS[0][1:8], -1, *CLEAN_EVENTS[0][9:])
    _stage(warehouse, [negative_receipt], hour=earlier)
    _stage(warehouse, CLEAN_EVENTS)

    latest = _check(staged_events_valid, warehouse)
    own_hour = staged_events_valid(dg.build_op_context(partition_key="2026-11-24-09:00"), warehouse=warehouse)

    assert latest.passed
    assert latest.metadata["hour_source"].value.startswith("latest hour")
    assert not own_hour.passed
    assert own_hour.metadata["hour"].value == "2026-11-24-09:00"
    assert own_hour.metadata["hour_source"].value == "run partition"


def test_accuracy_below_the_goal_warns_and_above_passes(warehouse, monkeypatch):
    _variances(warehouse, rows=1000, variances=6)  # 99.4 %
    below = _check(inventory_accuracy, warehouse)
    _execute(warehouse, "UPDATE recon.variances SET is_variance = false WHERE material_number = 'MAT-0000'")
    _execute(warehouse, "UPDATE recon.variances SET is_variance = false WHERE material_number = 'MAT-0001'")
    above = _check(inventory_accuracy, warehouse)  # 99.6 %
    monkeypatch.setenv("INVSYNC_ACCURACY_GOAL", "99.7")
    stricter = _check(inventory_accuracy, warehouse)

    assert not below.passed
    assert below.severity == dg.AssetCheckSeverity.WARN
    assert below.metadata["accuracy_pct"].value == pytest.approx(99.4)
    assert below.metadata["material_locations"].value == 1000
    assert below.metadata["variances"].value == 6
    assert below.metadata["goal_pct"].value == pytest.approx(99.5)
    assert above.passed
    assert above.metadata["accuracy_pct"].value == pytest.approx(99.6)
    assert not stricter.passed
    assert stricter.metadata["goal_pct"].value == pytest.approx(99.7)


def test_a_goal_that_is_not_a_percentage_says_what_to_set(warehouse, monkeypatch):
    _variances(warehouse, rows=10, variances=0)
    monkeypatch.setenv("INVSYNC_ACCURACY_GOAL", "high")

    with pytest.raises(ConfigError, match=r"accuracy_goal_pct='high' \(from INVSYNC_ACCURACY_GOAL\)"):
        _check(inventory_accuracy, warehouse)


def test_a_table_without_rows_passes_and_says_so(warehouse):
    result = _check(staged_events_valid, warehouse)

    assert result.passed
    assert "no rows yet" in result.metadata["note"].value


def test_loading_the_checks_does_not_import_great_expectations():
    code = (
        "import sys, invsync_pipeline.checks.asset_checks; "
        "sys.exit('great_expectations' in sys.modules or 'great_expectations.expectations' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_failing_staging_check_stops_the_ledger_in_a_partitioned_run(warehouse):
    # Written past the drain's validation on purpose: a receipt of 0 breaks the contract.
    bad = {**event(quantity="0", timestamp="2026-11-24T10:05:00Z"), "received_at": "2026-11-24T10:05:01Z"}
    bad["routing_key"] = "inventory.wh01.raw.receipt"
    StagedEventLog(load_settings().staged_dir).write_events({HOUR_KEY: [json.dumps(bad)]}, new_segment_id())

    result = dg.materialize(
        [staged_inventory_events, transaction_ledger, staged_events_valid, ledger_consistent],
        partition_key=HOUR_KEY,
        resources={"invsync": InvsyncResource(), "warehouse": warehouse},
        raise_on_error=False,
    )

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["hour_source"].value == "run partition"
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"staged_inventory_events"}  # the ledger was not built on the bad hour
