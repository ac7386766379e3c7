"""analyst_exports: the hour's tables as Parquet files, so analysts can query while runs write."""

import dagster as dg

from invsync_pipeline.assets.corrections import correction_audit_log
from invsync_pipeline.assets.hours import SINGLE_RUN, each_hour
from invsync_pipeline.assets.staging import DUCKDB_WRITER_POOL
from invsync_pipeline.messaging.staged_log import hour_bounds
from invsync_pipeline.partitions import hourly_partitions
from invsync_pipeline.resources import InvsyncResource, WarehouseResource

EXPORTED_TABLES = (
    "staging.inventory_events",
    "ledger.transaction_ledger",
    "snapshots.erp_inventory",
    "snapshots.mes_inventory",
    "recon.variances",
    "recon.variance_investigation",
    "recon.corrections",
    "recon.correction_audit_log",
)


@dg.asset(
    deps=[correction_audit_log],
    partitions_def=hourly_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="reconciliation",
    kinds={"duckdb", "parquet"},
    pool=DUCKDB_WRITER_POOL,
)
def analyst_exports(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The hour's rows of every analyst table as Parquet under INVSYNC_HOME/exports.

    DuckDB lets one process write its file at a time, and the pipeline's runs are that process.
    Analysts query these files instead, at any time, from DuckDB, pandas or a BI tool:
    `SELECT * FROM read_parquet('exports/recon.variances/*/*.parquet', hive_partitioning = true)`.
    One folder per table and one per hour (`hour=YYYY-MM-DDTHH`); a re-run replaces the hour's file."""
    return each_hour(context, lambda key: _analyst_exports_hour(key, context, invsync, warehouse))


def _analyst_exports_hour(
    partition_key: str, context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, _ = hour_bounds(partition_key)
    root = invsync.settings().home / "exports"
    hour = f"hour={start:%Y-%m-%dT%H}"
    counts = {}
    with warehouse.connect(read_only=True) as conn:
        for table in EXPORTED_TABLES:
            folder = root / table / hour
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / "data.parquet"
            tmp = folder / ".data.parquet.tmp"
            # COPY takes no bound parameters; the value is a datetime we formatted ourselves.
            # COPY answers with the number of rows it wrote.
            counts[table] = conn.execute(
                f"COPY (SELECT * FROM {table} WHERE partition_hour = TIMESTAMPTZ '{start.isoformat()}') "
                f"TO '{tmp}' (FORMAT parquet)"
            ).fetchone()[0]
            tmp.replace(final)
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(root)),
            "rows": dg.MetadataValue.md(
                "| table | rows |\n|---|---|\n" + "".join(f"| {t} | {n} |\n" for t, n in counts.items())
            ),
        }
    )
