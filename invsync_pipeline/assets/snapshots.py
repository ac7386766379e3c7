"""erp_inventory_snapshot and mes_inventory_snapshot: each system's stock at the start and end of an hour.

Both read the systems through ``sources/`` only (any SAP replica, any MES with the same API).
Rows are stored the first time an hour is reconciled and reused after that, so a backfill reads
what was true then; run config ``refresh: true`` reads the systems again.
"""

from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import pandas as pd

from invsync_pipeline.assets.hours import each_hour, hourly_asset
from invsync_pipeline.contract import instant_of
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.resources import ErpResource, MesResource, WarehouseResource
from invsync_pipeline.settings import load_settings


class SnapshotConfig(dg.Config):
    refresh: bool = False  # read the system again even if this hour was stored before


def _reuse_stored(warehouse: WarehouseResource, table: str, hour_start: datetime) -> dg.MaterializeResult | None:
    """The result for an hour stored before (a backfill reads what was true then), or None."""
    with warehouse.connect() as conn:
        rows = conn.execute(f"SELECT count(*) FROM {table} WHERE partition_hour = ?", [hour_start]).fetchone()[0]
    return dg.MaterializeResult(metadata={"dagster/row_count": rows, "reused_stored_snapshot": True}) if rows else None


def _replace(conn, table: str, hour_start: datetime, frame: pd.DataFrame) -> None:
    conn.execute(f"DELETE FROM {table} WHERE partition_hour = ?", [hour_start])
    if len(frame):
        conn.register("incoming", frame)
        columns = ", ".join(frame.columns)
        conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")
        conn.unregister("incoming")


@hourly_asset(
    group_name="reconciliation",
    kinds={"duckdb", "sqlalchemy"},
    metadata={"dagster/table_name": "snapshots.erp_inventory"},
)
def erp_inventory_snapshot(
    context: dg.AssetExecutionContext, config: SnapshotConfig, erp: ErpResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """ERP (SAP) stock per material x location at the start and end of the hour.

    Rebuilt like SAP's MB5B report: current unrestricted stock (MARD) minus every material
    document (MATDOC) entered after the instant, so any past hour is exact. Also stores the
    hour's material documents as movements (`snapshots.erp_movements`) and the material master
    (`snapshots.erp_materials`: type, base unit, unit cost, ABC class) for the investigation."""
    return each_hour(context, lambda key: _erp_inventory_snapshot_hour(key, config, erp, warehouse))


def _erp_inventory_snapshot_hour(
    partition_key: str, config: SnapshotConfig, erp_resource: ErpResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, end = hour_bounds(partition_key)
    if not config.refresh and (reused := _reuse_stored(warehouse, "snapshots.erp_inventory", start)):
        return reused
    plant = load_settings(erp_resource.config_path).plant  # a plant's code location: its stock only
    erp = erp_resource.open()
    try:
        taken_at = datetime.now(UTC)
        begin = erp.stock_as_of(start, plant, include_zero=True)
        finish = erp.stock_as_of(end, plant, include_zero=True)
        movements = erp.movements(start, end, plant)
        materials = erp.materials()
    finally:
        erp.dispose()
    key = ["material", "location", "unit"]
    both = pd.merge(
        begin[[*key, "material_type", "quantity"]].rename(columns={"quantity": "begin_quantity"}),
        finish[[*key, "material_type", "quantity"]].rename(columns={"quantity": "end_quantity"}),
        on=key, how="outer", suffixes=("_b", ""),
    )  # fmt: skip
    both["material_type"] = both["material_type"].fillna(both["material_type_b"])
    both = both.fillna({"begin_quantity": Decimal(0), "end_quantity": Decimal(0)})
    snapshot = pd.DataFrame(
        {
            "partition_hour": start,
            "material_number": both["material"].astype(str),
            "material_type": both["material_type"],
            "location": both["location"].astype(str),
            "unit": both["unit"].astype(str),
            "begin_quantity": both["begin_quantity"].astype(float),
            "end_quantity": both["end_quantity"].astype(float),
            "taken_at": taken_at,
            "method": "as_of_reconstruction",
        }
    )
    moves = pd.DataFrame(
        [
            (
                start,
                e.transaction_id,
                e.timestamp,
                e.material_number,
                loc,
                e.unit,
                e.transaction_type,
                e.reason,
                float(q),
            )  # fmt: skip
            for e in movements
            for loc, q in e.stock_effects()
        ],
        columns=[
            "partition_hour",
            "transaction_id",
            "event_time",
            "material_number",
            "location",
            "unit",
            "transaction_type",
            "reason",
            "quantity_effect",
        ],  # fmt: skip
    )
    master = pd.DataFrame(
        {
            "material_number": materials["material"].astype(str),
            "material_type": materials["material_type"],
            "base_unit": materials["base_unit"],
            "unit_cost": materials["unit_cost"].astype(float),
            "currency": materials["currency"],
            "abc_class": materials["abc_class"],
            "taken_at": taken_at,
        }
    )
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        _replace(conn, "snapshots.erp_inventory", start, snapshot)
        _replace(conn, "snapshots.erp_movements", start, moves)
        conn.execute("DELETE FROM snapshots.erp_materials")
        if len(master):
            conn.register("incoming", master)
            conn.execute("INSERT INTO snapshots.erp_materials SELECT * FROM incoming")
            conn.unregister("incoming")
        conn.execute("COMMIT")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(snapshot),
            "material_locations": len(snapshot),
            "movements": len(moves),
            "stock_end_total": float(snapshot["end_quantity"].sum()) if len(snapshot) else 0.0,
            "reused_stored_snapshot": False,
        }
    )


@hourly_asset(
    group_name="reconciliation",
    kinds={"duckdb", "api"},
    metadata={"dagster/table_name": "snapshots.mes_inventory"},
)
def mes_inventory_snapshot(
    context: dg.AssetExecutionContext, config: SnapshotConfig, mes: MesResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """MES stock per material x location at the start and end of the hour, and the MES's applied log.

    Read from the MES REST API (stock as of an instant; the log of applied transactions), stored
    on first reconciliation and reused after that, so a backfill sees what the MES showed then.
    The applied log (`snapshots.mes_applied`) lets the investigation tell "the MES never got it"
    from "the MES got it twice"."""
    return each_hour(context, lambda key: _mes_inventory_snapshot_hour(key, config, mes, warehouse))


def _mes_inventory_snapshot_hour(
    partition_key: str, config: SnapshotConfig, mes_resource: MesResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, end = hour_bounds(partition_key)
    if not config.refresh and (reused := _reuse_stored(warehouse, "snapshots.mes_inventory", start)):
        return reused
    taken_at = datetime.now(UTC)
    plant = load_settings(mes_resource.config_path).plant  # a plant's code location: its stock only
    # The MES the event-driven path wrote at the end of the hour: the shadow one during a cutover.
    with closing(mes_resource.event_path(min(end, taken_at))) as mes:
        begin = {(r.material_number, r.location, r.unit): r.quantity
                 for r in mes.stock(as_of=start, warehouse=plant)}  # fmt: skip
        finish = {(r.material_number, r.location, r.unit): r.quantity
                  for r in mes.stock(as_of=end, warehouse=plant)}  # fmt: skip
        applied = [row for row in mes.applied_transactions(since=start) if start <= instant_of(row["timestamp"]) < end]
    keys = sorted(set(begin) | set(finish))
    snapshot = pd.DataFrame(
        [
            (
                start,
                m,
                loc,
                unit,
                float(begin.get((m, loc, unit), 0)),
                float(finish.get((m, loc, unit), 0)),
                taken_at,
                "as_of_api",
            )  # fmt: skip
            for m, loc, unit in keys
        ],
        columns=[
            "partition_hour",
            "material_number",
            "location",
            "unit",
            "begin_quantity",
            "end_quantity",
            "taken_at",
            "method",
        ],  # fmt: skip
    )
    log_rows = [
        (
            start,
            row["transaction_id"],
            row.get("mes_transaction_id"),
            row["status"],
            instant_of(row["timestamp"]),
            instant_of(row["applied_at"]),
            mv["material_number"],
            mv["location"],
            mv["unit"],
            float(Decimal(mv["after"]) - Decimal(mv["before"])),
        )  # fmt: skip
        for row in applied
        for mv in row.get("movements", [])
    ]
    log = pd.DataFrame(
        log_rows,
        columns=[
            "partition_hour",
            "transaction_id",
            "mes_transaction_id",
            "status",
            "event_time",
            "applied_at",
            "material_number",
            "location",
            "unit",
            "quantity_effect",
        ],  # fmt: skip
    )
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        _replace(conn, "snapshots.mes_inventory", start, snapshot)
        _replace(conn, "snapshots.mes_applied", start, log)
        conn.execute("COMMIT")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(snapshot),
            "material_locations": len(snapshot),
            "applied_transactions": len(applied),
            "stock_end_total": float(snapshot["end_quantity"].sum()) if len(snapshot) else 0.0,
            "reused_stored_snapshot": False,
            "mes": getattr(mes, "base_url", type(mes).__name__),
        }
    )
