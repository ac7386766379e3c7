"""Data-quality checks of the hourly assets: Great Expectations suites on the hour's rows, invariants in DuckDB SQL.

Which hour: in a partitioned run (a materialization, the hourly schedule, a backfill) the check
reads the run's partition through ``context.partition_key``. Run on its own without a partition
(e.g. "Execute checks" in the UI), it validates the latest hour in the table and says so in its
metadata (``hour_source``). The checks themselves are not partitioned: ``partitions_def`` on asset
checks is a preview feature in Dagster 1.13, so a check's status in the UI is that of the last
hour it validated.
"""

from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.snapshots import erp_inventory_snapshot, mes_inventory_snapshot
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.checks import expectations as ex
from invsync_pipeline.partitions import hour_bounds, partition_key_of
from invsync_pipeline.plant_scope import asset_key
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL

# Share of material-locations whose ERP and MES books agree in an hour, in %. INVSYNC_ACCURACY_GOAL
# overrides it per deployment (a percentage, e.g. 99.0).
INVENTORY_VARIANCES = asset_key("inventory_variances")
_EXAMPLES = 5


class SnapshotCheckConfig(dg.Config):
    """Which material types may never show negative stock (a negative balance there warns)."""

    non_negative_material_types: list[str] = list(ex.DEFAULT_NON_NEGATIVE_MATERIAL_TYPES)


def _hour(context: dg.AssetCheckExecutionContext, conn, table: str) -> tuple[datetime | None, str]:
    """The hour to validate and where it came from: the run's partition, else the table's latest hour."""
    if context.has_partition_key:
        return hour_bounds(context.partition_key)[0], "run partition"
    latest = conn.execute(f"SELECT max(partition_hour) FROM {table}").fetchone()[0]
    return latest, "latest hour in the table (the run has no partition)"


def _no_hour(table: str, hour_source: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=True,
        metadata={"hour": None, "hour_source": hour_source, "note": f"{table} has no rows yet; nothing to validate"},
    )


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _failures_md(summary: dict[str, Any]) -> str:
    rows = ex.failed(summary)
    if not rows:
        return "_none_"
    lines = ["| expectation | column | condition | severity | unexpected | examples |", "|---|---|---|---|---|---|"]
    for r in rows:
        examples = r.get("exception") or r["unexpected_values"] or r.get("observed_value", "")
        lines.append(
            f"| {r['expectation']} | {_cell(r['column'])} | {_cell(r['condition'] or '')} | {r['severity']} "
            f"| {_cell(r['unexpected_count'] if r['unexpected_count'] is not None else '')} | {_cell(examples)} |"
        )
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[tuple]) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _gx_metadata(hour: datetime, hour_source: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "hour": partition_key_of(hour),
        "hour_source": hour_source,
        "rows": summary["rows"],
        "expectations": summary["evaluated"],
        "failed_expectations": summary["failed"],
        "failures": dg.MetadataValue.md(_failures_md(summary)),
        "expectation_results": dg.MetadataValue.json(summary),
    }


@dg.asset_check(asset=staged_inventory_events, blocking=True, pool=DUCKDB_WRITER_POOL)
def staged_events_valid(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """The hour's staged events keep contract v1, and every transaction_id is staged once.

    Great Expectations on the hour's rows: the table's columns, required fields not null,
    transaction_id unique, known source systems, material types, transaction types and reasons,
    quantity > 0 for receipts, issues and transfers (never 0 for adjustments, >= 0 for counts),
    to_location on transfers, target_system on RECON corrections, event_time inside the hour.
    In DuckDB: no transaction_id of the hour appears a second time anywhere in the table. Blocking:
    the ledger is not built on an hour that fails."""
    with warehouse.connect(read_only=True) as conn:
        hour, hour_source = _hour(context, conn, "staging.inventory_events")
        if hour is None:
            return _no_hour("staging.inventory_events", hour_source)
        frame = conn.execute("SELECT * FROM staging.inventory_events WHERE partition_hour = ?", [hour]).df()
        duplicates = conn.execute(
            """SELECT transaction_id, count(*) AS copies,
                      string_agg(DISTINCT strftime(partition_hour, '%Y-%m-%d-%H:00'), ', ') AS hours
               FROM staging.inventory_events
               WHERE transaction_id IN (SELECT transaction_id FROM staging.inventory_events WHERE partition_hour = ?)
               GROUP BY transaction_id HAVING count(*) > 1
               ORDER BY copies DESC, transaction_id""",
            [hour],
        ).fetchall()
    suite = ex.staged_events_suite(hour, hour + timedelta(hours=1))
    success, summary = ex.validate(frame, "staged_inventory_events", suite)
    return dg.AssetCheckResult(
        passed=success and not duplicates,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            **_gx_metadata(hour, hour_source, summary),
            "duplicated_ids_in_table": len(duplicates),
            "duplicated_ids": dg.MetadataValue.md(
                _md_table(["transaction_id", "copies", "hours"], duplicates[:_EXAMPLES])
            ),
        },
    )


@dg.asset_check(asset=transaction_ledger, blocking=True, pool=DUCKDB_WRITER_POOL)
def ledger_consistent(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """The hour's ledger adds up and holds every staged event of the hour.

    Great Expectations on the hour's rows: the table's columns, keys not null, one row per
    material x location x unit x source (and target) system, net_movement = receipts - issues +
    transfers_in - transfers_out + adjustments and transaction_count = the sum of the per-kind
    counts (both recomputed exactly in DuckDB), sums and counts >= 0. In DuckDB: the movements
    the ledger counts equal the staged events of the hour, kind by kind (a transfer counts twice:
    out and in). Blocking: variances are not computed from a ledger that fails."""
    with warehouse.connect(read_only=True) as conn:
        hour, hour_source = _hour(context, conn, "ledger.transaction_ledger")
        if hour is None:
            return _no_hour("ledger.transaction_ledger", hour_source)
        frame = conn.execute(
            """SELECT *,
                      net_movement - (receipts - issues + transfers_in - transfers_out + adjustments)
                          AS net_movement_residual,
                      transaction_count - (receipt_count + issue_count + transfer_in_count + transfer_out_count
                                           + adjustment_count + cycle_count_count) AS transaction_count_residual
               FROM ledger.transaction_ledger WHERE partition_hour = ?""",
            [hour],
        ).df()
        staged = conn.execute(
            """SELECT count(*) FILTER (WHERE transaction_type = 'receipt'),
                      count(*) FILTER (WHERE transaction_type = 'issue'),
                      count(*) FILTER (WHERE transaction_type = 'transfer'),
                      count(*) FILTER (WHERE transaction_type = 'transfer'),
                      count(*) FILTER (WHERE transaction_type = 'adjustment'),
                      count(*) FILTER (WHERE transaction_type = 'cycle_count'),
                      count(*) + count(*) FILTER (WHERE transaction_type = 'transfer')
               FROM staging.inventory_events WHERE partition_hour = ?""",
            [hour],
        ).fetchone()
        booked = conn.execute(
            """SELECT coalesce(sum(receipt_count), 0), coalesce(sum(issue_count), 0),
                      coalesce(sum(transfer_in_count), 0), coalesce(sum(transfer_out_count), 0),
                      coalesce(sum(adjustment_count), 0), coalesce(sum(cycle_count_count), 0),
                      coalesce(sum(transaction_count), 0)
               FROM ledger.transaction_ledger WHERE partition_hour = ?""",
            [hour],
        ).fetchone()
    success, summary = ex.validate(frame, "transaction_ledger", ex.ledger_suite())
    kinds = ("receipts", "issues", "transfers in", "transfers out", "adjustments", "cycle counts", "all movements")
    movements = [(kind, int(s), int(b)) for kind, s, b in zip(kinds, staged, booked, strict=True)]
    complete = all(s == b for _, s, b in movements)
    return dg.AssetCheckResult(
        passed=success and complete,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            **_gx_metadata(hour, hour_source, summary),
            "complete": complete,
            "staged_movements": movements[-1][1],
            "ledger_movements": movements[-1][2],
            "movements": dg.MetadataValue.md(_md_table(["movement", "staged events", "ledger"], movements)),
        },
    )


def _snapshot_check(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, config: SnapshotCheckConfig, system: str
) -> dg.AssetCheckResult:
    protected = list(config.non_negative_material_types)
    unknown = sorted(set(protected) - set(ex.MATERIAL_TYPES))
    if unknown:
        raise ValueError(
            f"non_negative_material_types has unknown material types {unknown}; use some of {list(ex.MATERIAL_TYPES)}"
        )
    table = f"snapshots.{system}_inventory"
    own_type = "s.material_type" if system == "erp" else "NULL"
    with warehouse.connect(read_only=True) as conn:
        hour, hour_source = _hour(context, conn, table)
        if hour is None:
            return _no_hour(table, hour_source)
        frame = conn.execute(
            f"""SELECT s.*, coalesce({own_type}, m.material_type) AS stock_material_type
                FROM {table} AS s
                LEFT JOIN (SELECT material_number, any_value(material_type) AS material_type
                           FROM snapshots.erp_materials GROUP BY material_number) AS m USING (material_number)
                WHERE s.partition_hour = ?""",
            [hour],
        ).df()
        ledger_rows = conn.execute(
            "SELECT count(*) FROM ledger.transaction_ledger WHERE partition_hour = ?", [hour]
        ).fetchone()[0]
    suite = ex.snapshot_suite(system, protected, expect_rows=ledger_rows > 0)
    _, summary = ex.validate(frame, f"{system}_inventory_snapshot", suite)
    errors, warnings = ex.failed(summary, "error"), ex.failed(summary, "warn")
    # Negative stock of the other material types (WIP backflushed before its receipt, say) is
    # allowed: reported here, it does not fail the check.
    negative = (frame["begin_quantity"] < 0) | (frame["end_quantity"] < 0)
    allowed = frame[negative & ~frame["stock_material_type"].isin(protected)]
    if len(allowed):
        context.log.warning(
            f"{len(allowed)} {system.upper()} material-locations with negative stock in types allowed to go negative"
        )
    examples = [
        (r.material_number, r.location, r.unit, r.stock_material_type, r.begin_quantity, r.end_quantity)
        for r in allowed.head(_EXAMPLES).itertuples(index=False)
    ]
    return dg.AssetCheckResult(
        passed=not errors and not warnings,
        severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
        metadata={
            **_gx_metadata(hour, hour_source, summary),
            "ledger_rows": ledger_rows,
            "non_negative_material_types": ", ".join(protected),
            "negative_stock_not_allowed": sum(r["unexpected_count"] or 0 for r in warnings),
            "negative_stock_allowed": len(allowed),
            "negative_stock_allowed_examples": dg.MetadataValue.md(
                _md_table(["material", "location", "unit", "type", "begin", "end"], examples)
            ),
        },
    )


@dg.asset_check(asset=erp_inventory_snapshot, pool=DUCKDB_WRITER_POOL)
def erp_snapshot_valid(
    context: dg.AssetCheckExecutionContext, config: SnapshotCheckConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The ERP stock snapshot of the hour is complete and sound.

    Great Expectations: the table's columns, no nulls, one row per material x location x unit,
    at least one row when the hour's ledger has movements (errors); no negative stock in the
    material types that may not go negative, by default raw, finished and packaging (a warning).
    Negative stock of other types is listed in the metadata and does not fail the check."""
    return _snapshot_check(context, warehouse, config, "erp")


@dg.asset_check(asset=mes_inventory_snapshot, pool=DUCKDB_WRITER_POOL)
def mes_snapshot_valid(
    context: dg.AssetCheckExecutionContext, config: SnapshotCheckConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The MES stock snapshot of the hour is complete and sound.

    As for the ERP snapshot; the MES has no material types, so the stock rule takes each
    material's type from the ERP material master (`snapshots.erp_materials`)."""
    return _snapshot_check(context, warehouse, config, "mes")


@dg.asset_check(asset=INVENTORY_VARIANCES, pool=DUCKDB_WRITER_POOL)
def inventory_accuracy(
    context: dg.AssetCheckExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The share of material-locations where ERP and MES agree in the hour meets the goal.

    Accuracy = material-locations without a variance / all material-locations of the hour, in %.
    Below the goal (`checks.accuracy_goal_pct`, 99.5 %; or INVSYNC_ACCURACY_GOAL) the check
    warns; it never stops a run, since the variances themselves are what the next steps
    investigate and correct."""
    goal = invsync.settings().checks.accuracy_goal_pct
    with warehouse.connect(read_only=True) as conn:
        hour, hour_source = _hour(context, conn, "recon.variances")
        if hour is None:
            return _no_hour("recon.variances", hour_source)
        rows, variances = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_variance) FROM recon.variances WHERE partition_hour = ?",
            [hour],
        ).fetchone()
    # An hour without material-locations has nothing in disagreement (as the asset reports it).
    accuracy = 100.0 * (rows - variances) / rows if rows else 100.0
    return dg.AssetCheckResult(
        passed=accuracy >= goal,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "hour": partition_key_of(hour),
            "hour_source": hour_source,
            "accuracy_pct": round(accuracy, 3),
            "goal_pct": goal,
            "material_locations": rows,
            "variances": variances,
        },
    )


ASSET_CHECKS = [staged_events_valid, ledger_consistent, erp_snapshot_valid, mes_snapshot_valid, inventory_accuracy]
