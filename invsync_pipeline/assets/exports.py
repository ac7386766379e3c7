"""analyst_exports: the hour's tables as Parquet files, so analysts can query while runs write."""

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from invsync_pipeline.assets.corrections import correction_audit_log
from invsync_pipeline.assets.hours import SINGLE_RUN, chunk_bounds, each_chunk
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
    return each_chunk(context, lambda keys: _analyst_exports_hours(keys, invsync, warehouse))


def _analyst_exports_hours(
    partition_keys: Sequence[str], invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Exports the consecutive hours ``partition_keys`` (one, or a chunk): one COPY per table,
    split into the hours' folders by DuckDB, then each file moved into place (a reader sees the
    old file or the new one, never half of one)."""
    first, last = chunk_bounds(partition_keys)
    hours = [f"{hour_bounds(key)[0]:%Y-%m-%dT%H}" for key in partition_keys]
    root = invsync.settings().home / "exports"
    root.mkdir(parents=True, exist_ok=True)
    # Scratch folders of a run that was killed mid-export (runs that export never overlap: the
    # DuckDB writer pool lets one run at a time).
    for stale in root.glob(".export-*"):
        shutil.rmtree(stale, ignore_errors=True)
    counts = {}
    with warehouse.connect(read_only=True) as conn:
        for table in EXPORTED_TABLES:
            with tempfile.TemporaryDirectory(prefix=".export-", dir=root) as scratch:
                written = Path(scratch) / "hours"
                # COPY takes no bound parameters; the values are datetimes we formatted ourselves.
                # It answers with the number of rows it wrote.
                counts[table] = conn.execute(
                    f"COPY (SELECT *, strftime(partition_hour, '%Y-%m-%dT%H') AS hour FROM {table} "
                    f"WHERE partition_hour BETWEEN TIMESTAMPTZ '{first.isoformat()}' "
                    f"AND TIMESTAMPTZ '{last.isoformat()}') "
                    f"TO '{written}' (FORMAT parquet, PARTITION_BY (hour), WRITE_PARTITION_COLUMNS false)"
                ).fetchone()[0]
                files = {hour: sorted((written / f"hour={hour}").glob("*.parquet")) for hour in hours}
                if many := {hour: len(made) for hour, made in files.items() if len(made) > 1}:
                    raise RuntimeError(f"{table}: DuckDB wrote more than one file for an hour {many}; nothing replaced")
                if any(not made for made in files.values()):
                    # An hour without rows still gets a file, with the table's columns.
                    empty = Path(scratch) / "empty.parquet"
                    conn.execute(f"COPY (SELECT * FROM {table} WHERE false) TO '{empty}' (FORMAT parquet)")
                    for hour in (hour for hour, made in files.items() if not made):
                        files[hour] = [Path(scratch) / f"{hour}.parquet"]
                        shutil.copyfile(empty, files[hour][0])
                for hour, (made,) in files.items():
                    folder = root / table / f"hour={hour}"
                    folder.mkdir(parents=True, exist_ok=True)
                    made.replace(folder / "data.parquet")
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(root)),
            "rows": dg.MetadataValue.md(
                "| table | rows |\n|---|---|\n" + "".join(f"| {t} | {n} |\n" for t, n in counts.items())
            ),
        }
    )
