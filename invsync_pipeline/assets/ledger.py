"""transaction_ledger: the hour's movements summed per material x location x source system."""

from collections.abc import Sequence

import dagster as dg

from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, hourly_asset
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.resources import WarehouseResource
from invsync_pipeline.table_schemas import table_schema
from invsync_pipeline.warehouse import sql

LEDGER_TABLE = "ledger.transaction_ledger"


# From the DDL at import, as staged_inventory_events does (see there why).
@hourly_asset(
    deps=[staged_inventory_events],
    group_name="ledger",
    kinds={"duckdb"},
    metadata={"dagster/column_schema": table_schema(LEDGER_TABLE), "dagster/table_name": LEDGER_TABLE},
)
def transaction_ledger(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """What moved in the hour, per material x location x unit x source system.

    Receipts, issues, transfers in and out (a transfer counts out at its location and in at its
    to_location), signed adjustments, the net movement, the last cycle count and the number of
    movements of each kind. This is the "transactions" term of the hourly three-way check:
    beginning balance + net movement - ending balance."""
    return each_chunk(context, lambda keys: _transaction_ledger_hours(keys, warehouse))


def _transaction_ledger_hours(partition_keys: Sequence[str], warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The ledger of the consecutive hours ``partition_keys`` (one, or a chunk of a ranged run)."""
    first, last = chunk_bounds(partition_keys)
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM ledger.transaction_ledger WHERE partition_hour BETWEEN ? AND ?", [first, last])
        conn.execute(
            f"INSERT INTO ledger.transaction_ledger {sql('ledger/transaction_ledger')}",
            {"first_hour": first, "last_hour": last},
        )
        rows, movements, net = conn.execute(
            """SELECT count(*), coalesce(sum(transaction_count), 0), coalesce(sum(net_movement), 0)
               FROM ledger.transaction_ledger WHERE partition_hour BETWEEN ? AND ?""",
            [first, last],
        ).fetchone()
        top = conn.execute(
            """SELECT source_system, count(*) AS ledger_rows, sum(receipts), sum(issues),
                      sum(transfers_in), sum(transfers_out), sum(adjustments)
               FROM ledger.transaction_ledger WHERE partition_hour BETWEEN ? AND ?
               GROUP BY ALL ORDER BY 1""",
            [first, last],
        ).fetchall()
        conn.execute("COMMIT")
    table = "| source | rows | receipts | issues | transfers in | transfers out | adjustments |\n"
    table += "|---|---|---|---|---|---|---|\n"
    table += "".join(f"| {' | '.join(str(v) for v in row)} |\n" for row in top)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "movements": movements,
            "net_movement_sum": float(net),
            "by_source": dg.MetadataValue.md(table),
        }
    )
