"""staged_inventory_events: one hour of the staged event log, loaded into DuckDB once per id."""

from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, hourly_asset
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.table_schemas import table_schema
from invsync_pipeline.warehouse import sql

STAGED_EVENTS_TABLE = "staging.inventory_events"


# The column schema comes with the definition, so the lineage graph shows the columns before the
# first run (given with each MaterializeResult instead, it would not). Deriving it from the DDL
# reads sql/schema/*.sql when this module is imported: a text parse of a few files that ship with
# the code, about 2 ms, no settings, no DuckDB. test_table_schemas pins that every file parses,
# so a DDL line the reader cannot read fails that test, not the loading of the definitions.
@hourly_asset(
    group_name="staging",
    kinds={"duckdb", "rabbitmq"},
    metadata={"dagster/column_schema": table_schema(STAGED_EVENTS_TABLE), "dagster/table_name": STAGED_EVENTS_TABLE},
)
def staged_inventory_events(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every material movement of the hour, as drained from RabbitMQ's ledger tap.

    Reads the hour's segments of the staged event log (written and fsynced by the
    `ledger_tap_sensor` before it acked the messages) into `staging.inventory_events`, one row per
    transaction_id: copies from redeliveries are dropped, the first staged copy wins. Re-running
    an hour replaces its rows with the same result, so backfills equal live runs. Invalid
    messages never get here: the drain quarantined them with their reason."""
    keys = context.partition_keys
    if len(keys) == 1:
        return _stage_hours(keys, context, invsync, warehouse, check_other_hours=True)
    result = each_chunk(
        context, lambda chunk: _stage_hours(chunk, context, invsync, warehouse, check_other_hours=False)
    )
    first, last = chunk_bounds(keys)
    with warehouse.connect() as conn:
        dropped = conn.execute(
            sql("staging/cross_hour_duplicates"), {"first_hour": first, "last_hour": last}
        ).fetchone()[0]
    return dg.MaterializeResult(metadata={**(result.metadata or {}), "cross_hour_duplicates_dropped": dropped})


def _stage_hours(
    partition_keys: Sequence[str],
    context: dg.AssetExecutionContext,
    invsync: InvsyncResource,
    warehouse: WarehouseResource,
    *,
    check_other_hours: bool,
) -> dg.MaterializeResult:
    """Stages the consecutive hours ``partition_keys`` (one, or a chunk of a ranged run)."""
    first, last = chunk_bounds(partition_keys)
    staged_log = StagedEventLog(invsync.settings().staged_dir)
    # Each segment as its Parquet twin (typed rows, as staging wants them) when the drain wrote
    # one, else as its JSON Lines file, read and cast per hour (sql/staging/segment_rows.sql).
    twins: list[str] = []
    lines_by_hour: dict[datetime, list[str]] = {}
    for key in partition_keys:
        for path in staged_log.readable_segments(key):
            if path.suffix == ".parquet":
                twins.append(str(path))
            else:
                lines_by_hour.setdefault(hour_bounds(key)[0], []).append(str(path))
    segments = len(twins) + sum(len(files) for files in lines_by_hour.values())
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM staging.inventory_events WHERE partition_hour BETWEEN ? AND ?", [first, last])
        conn.execute("DELETE FROM staging.loaded_segments WHERE partition_hour BETWEEN ? AND ?", [first, last])
        rows_read = 0
        if segments:
            # Every line of the hours, copies included, read once: the per-segment counts and the
            # table come from it (they read the JSON twice before, the count ~10% of staging).
            conn.execute("CREATE OR REPLACE TEMP TABLE staged_rows AS FROM staging.inventory_events LIMIT 0")
            if twins:
                conn.execute("INSERT INTO staged_rows BY NAME FROM read_parquet($files)", {"files": twins})
            for hour, files in lines_by_hour.items():
                conn.execute(
                    f"INSERT INTO staged_rows BY NAME {sql('staging/segment_rows')}",
                    {"files": files, "partition_hour": hour},
                )
            params = {"first_hour": first, "last_hour": last, "check_other_hours": check_other_hours}
            conn.execute(f"INSERT INTO staging.inventory_events {sql('staging/inventory_events')}", params)
            conn.execute(
                """INSERT INTO staging.loaded_segments
                   SELECT partition_hour, segment_id, count(*), $loaded_at, $run_id FROM staged_rows
                   GROUP BY ALL ORDER BY ALL""",
                {"loaded_at": datetime.now(UTC), "run_id": context.run.run_id},
            )
            (rows_read,) = conn.execute("SELECT count(*) FROM staged_rows").fetchone()
            conn.execute("DROP TABLE staged_rows")
        # Per hour, then summed: a chunk reports what its hours would have reported one by one.
        stats = conn.execute(
            """SELECT coalesce(sum(events), 0), coalesce(sum(material_locations), 0), coalesce(sum(erp), 0),
                      coalesce(sum(mes), 0), coalesce(sum(recon), 0)
               FROM (SELECT count(*) AS events,
                            count(DISTINCT material_number || '@' || location) AS material_locations,
                            count(*) FILTER (WHERE source_system = 'ERP') AS erp,
                            count(*) FILTER (WHERE source_system = 'MES') AS mes,
                            count(*) FILTER (WHERE source_system = 'RECON') AS recon
                     FROM staging.inventory_events WHERE partition_hour BETWEEN ? AND ?
                     GROUP BY partition_hour)""",
            [first, last],
        ).fetchone()
        conn.execute("COMMIT")
    events, material_locations, erp, mes, recon = (int(v) for v in stats)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": events,
            "events": events,
            "segments": segments,
            "rows_read": rows_read,
            "duplicates_dropped": rows_read - events,
            "material_locations": material_locations,
            "by_source": dg.MetadataValue.md(f"| ERP | MES | RECON |\n|---|---|---|\n| {erp} | {mes} | {recon} |"),
        }
    )
