"""variance_report against variances and causes written straight into a DuckDB file (no broker)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import pytest

from invsync_pipeline.assets.reports import variance_report
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import open_warehouse

EARLIER, HOUR = "2025-03-04-09:00", "2025-03-04-10:00"
EARLIER_START = datetime(2025, 3, 4, 9, tzinfo=UTC)
HOUR_START = datetime(2025, 3, 4, 10, tzinfo=UTC)


def _variance(hour, material, location, material_type, erp_end, mes_end, unit_cost=None, erp_three_way="0"):
    erp_end, mes_end, diff = Decimal(erp_end), Decimal(mes_end), Decimal(erp_end) - Decimal(mes_end)
    three_way = Decimal(erp_three_way)
    larger = max(abs(erp_end), abs(mes_end))
    return {
        "partition_hour": hour, "material_number": material, "material_type": material_type, "abc_class": "B",
        "location": location, "warehouse": location.split("/")[0], "unit": "KG", "base_unit": "KG",
        "erp_begin": erp_end, "erp_ledger_net": 0, "erp_expected_end": erp_end + three_way, "erp_end": erp_end,
        "erp_three_way": three_way, "mes_begin": mes_end, "mes_ledger_net": 0, "mes_expected_end": mes_end,
        "mes_end": mes_end, "mes_three_way": 0, "cross_difference": diff, "abs_difference": abs(diff),
        "pct_difference": round(100 * abs(diff) / larger, 4) if larger else None,
        "unit_cost": Decimal(unit_cost) if unit_cost else None,
        "value_difference": round(abs(diff) * Decimal(unit_cost), 2) if unit_cost else None,
        "ledger_transactions": 1, "is_variance": diff != 0 or three_way != 0,
    }  # fmt: skip


def _cause(hour, material, location, system, cause, quantity, transaction_ids, is_timing=False):
    return {"partition_hour": hour, "material_number": material, "location": location, "unit": "KG",
            "system": system, "cause": cause, "is_timing": is_timing, "explained_quantity": Decimal(quantity),
            "transaction_ids": transaction_ids, "detail": f"{cause} in the test"}  # fmt: skip


def _insert(conn, table: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [[row[c] for c in columns] for row in rows],
    )


@pytest.fixture
def warehouse_path(settings):
    """Two reconciled hours. At 10:00: six material-locations, three of them in agreement."""
    path = settings.warehouse_path
    with open_warehouse(path) as conn:
        _insert(conn, "recon.variances", [
            _variance(EARLIER_START, "MAT-A", "WH01/RM01", "raw", "100", "100"),
            _variance(EARLIER_START, "MAT-B", "WH01/RM01", "raw", "40", "40"),
            _variance(EARLIER_START, "MAT-C", "WH02/FG01", "finished", "8", "8"),
            _variance(EARLIER_START, "MAT-D", "WH02/FG01", "finished", "5", "9", unit_cost="1"),
            _variance(HOUR_START, "MAT-A", "WH01/RM01", "raw", "130", "100", unit_cost="2.5"),
            _variance(HOUR_START, "MAT-B", "WH01/RM01", "raw", "40", "40", unit_cost="2.5"),
            _variance(HOUR_START, "MAT-C", "WH02/FG01", "finished", "8", "20", unit_cost="10"),
            _variance(HOUR_START, "MAT-D", "WH02/FG01", "finished", "5", "5", unit_cost="1"),
            _variance(HOUR_START, "MAT-E", "WH02/PK01", None, "7", "7", erp_three_way="5"),
            _variance(HOUR_START, "MAT-F", "WH01/RM01", "wip", "3", "3"),
        ])  # fmt: skip
        _insert(conn, "recon.variance_investigation", [
            _cause(EARLIER_START, "MAT-D", "WH02/FG01", "MES", "pending_sync", "-4", ["T-0"], is_timing=True),
            _cause(HOUR_START, "MAT-A", "WH01/RM01", "MES", "missing_in_mes", "30", ["T-1"]),
            _cause(HOUR_START, "MAT-C", "WH02/FG01", "ERP", "missing_in_erp", "-10", ["T-2", "T-3"]),
            _cause(HOUR_START, "MAT-C", "WH02/FG01", "MES", "unexplained", "-2", []),
        ])  # fmt: skip
        _insert(conn, "recon.corrections", [{
            "correction_id": "COR-1", "partition_hour": HOUR_START, "material_number": "MAT-A",
            "material_type": "raw", "location": "WH01/RM01", "unit": "KG", "cause": "missing_in_mes",
            "target_system": "MES", "quantity": Decimal("30"), "truth": "ERP", "rule": "erp_wins_otherwise",
            "pct_of_balance": Decimal("23.0769"), "value": Decimal("75"), "critical": True,
            "status": "held_for_review", "decided_by": "auto:erp_wins_otherwise", "decided_at": HOUR_START,
            "explained_by": ["T-1"],
        }])  # fmt: skip
    return path


def _materialize(partition_key: str) -> dg.ExecuteInProcessResult:
    # Alone: variance_investigation and auto_corrections are upstream and not in the selection.
    result = dg.materialize([variance_report], partition_key=partition_key,
                            resources={"invsync": InvsyncResource(), "warehouse": WarehouseResource()})  # fmt: skip
    assert result.success
    return result


def _report_rows(path, hour):
    with open_warehouse(path, read_only=True) as conn:
        return conn.execute(
            "SELECT * FROM recon.variance_report WHERE partition_hour = ? ORDER BY ALL", [hour]
        ).fetchall()


def test_report_table_has_one_row_per_variance_and_cause(warehouse_path):
    _materialize(HOUR)

    with open_warehouse(warehouse_path, read_only=True) as conn:
        rows = conn.execute(
            """SELECT warehouse, material_type, material_number, cause, system, cross_difference, pct_difference,
                      value_difference, explained_quantity, explained_value, transaction_ids, correction_id,
                      correction_status
               FROM recon.variance_report ORDER BY material_number, cause"""
        ).fetchall()
    assert rows == [
        ("WH01", "raw", "MAT-A", "missing_in_mes", "MES", Decimal("30"), Decimal("23.0769"), Decimal("75"),
         Decimal("30"), Decimal("75"), ["T-1"], "COR-1", "held_for_review"),
        ("WH02", "finished", "MAT-C", "missing_in_erp", "ERP", Decimal("-12"), Decimal("60"), Decimal("120"),
         Decimal("-10"), Decimal("100"), ["T-2", "T-3"], None, None),
        ("WH02", "finished", "MAT-C", "unexplained", "MES", Decimal("-12"), Decimal("60"), Decimal("120"),
         Decimal("-2"), Decimal("20"), [], None, None),
        ("WH02", None, "MAT-E", "no_cause_found", None, Decimal("0"), Decimal("0"), None, None, None, [], None, None),
    ]  # fmt: skip


def test_csv_lists_the_hours_variances_largest_value_first(warehouse_path, settings):
    result = _materialize(HOUR)

    path = settings.home / "reports" / "variances-2025-03-04T10.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["material_number"], r["cause"], r["explained_quantity"], r["value_difference"],
             r["transaction_ids"], r["correction_status"]) for r in rows] == [
        ("MAT-C", "missing_in_erp", "-10", "120", "T-2 T-3", ""),
        ("MAT-C", "unexplained", "-2", "120", "", ""),
        ("MAT-A", "missing_in_mes", "30", "75", "T-1", "held_for_review"),
        ("MAT-E", "no_cause_found", "", "", "", ""),
    ]  # fmt: skip
    assert rows[0]["partition_hour"] == "2025-03-04T10:00:00+00:00"
    metadata = result.asset_materializations_for_node("variance_report")[0].metadata
    assert metadata["report_csv"] == dg.MetadataValue.path(str(path))
    assert metadata["dagster/row_count"].value == 4


def test_html_page_shows_the_headline_figures_tables_and_chart(warehouse_path, settings):
    result = _materialize(HOUR)

    page = (settings.home / "reports" / "variances-2025-03-04T10.html").read_text()
    assert "<b>6</b><span>material-locations</span>" in page
    assert "<b>3</b><span>in agreement</span>" in page
    assert "<b>50.00 %</b><span>accuracy</span>" in page
    assert "<b>3</b><span>variances</span>" in page
    assert "<b>195.00</b><span>value at stake</span>" in page
    assert "1 variance(s) have no unit cost" in page
    assert "<svg" in page and page.count("<rect") == 2  # one bar per reconciled hour
    assert "2025-03-04 09:00 UTC: 1 of 4 material-locations differ, accuracy 75.00 %" in page
    # by plant: WH01 has MAT-A, MAT-B, MAT-F, one variance worth 75
    assert "<td>WH01</td><td class=n>3</td><td class=n>2</td><td class=n>1</td><td class=n>66.67</td>" in page
    assert "<td>(unknown)</td>" in page  # MAT-E's material type
    assert "<td>held_for_review</td>" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    metadata = result.asset_materializations_for_node("variance_report")[0].metadata
    assert metadata["accuracy_pct"].value == 50.0
    assert metadata["value_at_stake"].value == 195.0
    assert metadata["held_for_review"].value == 1
    assert "| WH01 | 0 | 1 | 0 | 0 |\n| WH02 | 1 | 0 | 1 | 1 |" in metadata["variances_by_plant_and_cause"].value


def test_rerunning_the_hour_gives_the_same_table_and_files(warehouse_path, settings):
    _materialize(HOUR)
    reports = settings.home / "reports"
    first_rows = _report_rows(warehouse_path, HOUR_START)
    first_files = {p.name: p.read_bytes() for p in reports.iterdir()}

    _materialize(HOUR)

    assert _report_rows(warehouse_path, HOUR_START) == first_rows
    assert {p.name: p.read_bytes() for p in reports.iterdir()} == first_files
    assert sorted(first_files) == ["latest.html", "variances-2025-03-04T10.csv", "variances-2025-03-04T10.html"]


def test_latest_page_stays_on_the_newest_hour_when_an_earlier_hour_is_run(warehouse_path, settings):
    reports = settings.home / "reports"
    _materialize(HOUR)
    _materialize(EARLIER)

    assert (reports / "latest.html").read_text() == (reports / "variances-2025-03-04T10.html").read_text()
    earlier = (reports / "variances-2025-03-04T09.html").read_text()
    assert "<b>75.00 %</b><span>accuracy</span>" in earlier
    assert "<td>pending_sync</td><td>yes</td>" in earlier
    assert len(_report_rows(warehouse_path, EARLIER_START)) == 1
    assert len(_report_rows(warehouse_path, HOUR_START)) == 4  # the other hour is untouched


def test_an_hour_without_rows_still_gets_a_report(settings):
    _materialize("2025-03-05-00:00")

    page = (settings.home / "reports" / "variances-2025-03-05T00.html").read_text()
    assert "<b>100.00 %</b><span>accuracy</span>" in page
    assert "no reconciled hours yet" in page
    assert (settings.home / "reports" / "variances-2025-03-05T00.csv").read_text().count("\n") == 1  # header only
