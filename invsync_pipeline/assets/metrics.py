"""flow_metrics: how the event flow behaved in an hour — throughput, sync lag, retries, dead letters, queue depth."""

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from invsync_pipeline.assets.hours import each_hour, hourly_asset
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.assets.queue_depth import ROLES, HourDepth, hour_depth
from invsync_pipeline.messaging import dlq
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.plant_scope import asset_key
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import SQL_DIR

OPS_SCHEMA_FILE: Path = SQL_DIR / "schema" / "ops.sql"
SECONDS_PER_HOUR = 3600


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's and DuckDB quantile_cont's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _sync_log_stats(path: Path, transaction_ids: list[str]) -> tuple[int, int, list[float]]:
    """(applied, retries, sorted lags in ms) of the sync log rows of these transactions."""
    # Read-only, so a backfill never creates or changes the worker's file; the ids go into a
    # temporary table, which lives outside the file.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("CREATE TEMP TABLE hour_events (transaction_id TEXT PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO temp.hour_events VALUES (?)", ((t,) for t in transaction_ids))
        applied, retries = conn.execute(
            """SELECT coalesce(sum(status = 'applied'), 0), coalesce(sum(attempts > 1), 0)
               FROM sync_log JOIN temp.hour_events USING (transaction_id)"""
        ).fetchone()
        lags = [
            float(lag)
            for (lag,) in conn.execute(
                """SELECT confirmed_ms - published_ms FROM sync_log JOIN temp.hour_events USING (transaction_id)
                   WHERE status = 'applied' AND published_ms IS NOT NULL
                   ORDER BY 1"""
            )
        ]
    finally:
        conn.close()
    return int(applied), int(retries), lags


def queue_depth_metadata(depth: HourDepth) -> dict[str, object]:
    """Numeric per role (so the metadata Plots view charts them hour by hour) and a table per queue."""
    metadata: dict[str, object] = {"queue_samples": depth.passes}
    for role in ROLES:
        metadata[f"queue_depth_max_{role}"] = depth.max_by_role[role]
    for role in ROLES:
        metadata[f"queue_depth_last_{role}"] = depth.last_by_role[role]
    metadata["queue_depth"] = dg.MetadataValue.md(md_table(depth.by_queue, limit=40))
    return metadata


@hourly_asset(
    deps=[asset_key("staged_inventory_events")],
    group_name="operations",
    kinds={"duckdb", "sqlite"},
    metadata={"dagster/table_name": "ops.flow_metrics"},
)
def flow_metrics(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """How the hour's movements flowed, charted hour by hour in the UI (Overview > Metadata > Plots).

    Every count is about the movements that happened in the hour (event time), like the
    reconciliation of that hour: staged = the hour's rows in `staging.inventory_events` (per
    source system); published = those that came with a publisher's timestamp (outbox, MES
    outbox, corrections; the ledger tap stages a copy of every valid message published);
    applied = those the sync worker applied to the MES (its sync log, status applied), each also
    per second. Sync lag = MES confirmation − publish time of the applied ones, p50/p95/p99 in
    ms. Retries = the hour's movements that needed more than one attempt. Dead letters = parked
    messages whose event time falls in the hour, by reason (0 with a note when the broker cannot
    be reached). Queue depth = ready + unacked messages per queue role, its maximum and its
    last value over the samples queue_health_sensor took during the hour (wall clock; 0 with
    queue_samples 0 when nothing sampled), and a table per queue.

    One row per hour in `ops.flow_metrics` (queue depth is metadata only); re-running an hour
    replaces its row, counting what the sync log and the parking queue hold then."""
    return each_hour(context, lambda key: _flow_metrics_hour(key, context, invsync, warehouse))


def _flow_metrics_hour(
    partition_key: str, context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, end = hour_bounds(partition_key)
    settings = invsync.settings()
    notes: list[str] = []

    reasons: Counter[str] = Counter()
    parking_read = True
    try:
        for parked in dlq.browse(settings):
            ts = parked.event_at
            if ts is not None and start <= ts < end:
                reasons[parked.reason] += 1
    except dlq.BROKER_UNREACHABLE as exc:
        parking_read = False
        context.log.warning(f"parking queue not read, dead letters reported as 0: {exc}")
        notes.append(f"parking queue not read (broker unreachable), dead letters reported as 0: {exc}")
    dead_letters = sum(reasons.values())

    depth = hour_depth(settings.home / "ops.sqlite", start, end)
    if depth.passes == 0:
        notes.append("no queue samples in this hour: queue_health_sensor was not running (queue depth reported as 0)")

    sync_path = settings.home / "sync.sqlite"
    with warehouse.connect() as conn:
        conn.execute(OPS_SCHEMA_FILE.read_text())
        staged, erp, mes, recon, published = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE source_system = 'ERP'),
                      count(*) FILTER (WHERE source_system = 'MES'),
                      count(*) FILTER (WHERE source_system = 'RECON'),
                      count(published_at)
               FROM staging.inventory_events WHERE partition_hour = ?""",
            [start],
        ).fetchone()
        if sync_path.exists():
            ids = [tid for (tid,) in conn.execute(
                "SELECT transaction_id FROM staging.inventory_events WHERE partition_hour = ?", [start]
            ).fetchall()]  # fmt: skip
            applied, retries, lags = _sync_log_stats(sync_path, ids)
        else:
            applied, retries, lags = 0, 0, []
            notes.append(f"no sync log at {sync_path}: the sync worker has not run here")
        lag_p50, lag_p95, lag_p99 = (percentile(lags, q) if lags else None for q in (0.50, 0.95, 0.99))
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM ops.flow_metrics WHERE partition_hour = ?", [start])
        conn.execute(
            f"INSERT INTO ops.flow_metrics VALUES ({', '.join(['?'] * 17)})",
            [start, staged, erp, mes, recon, applied, staged / SECONDS_PER_HOUR, applied / SECONDS_PER_HOUR,
             len(lags), lag_p50, lag_p95, lag_p99, retries, dead_letters, json.dumps(dict(sorted(reasons.items()))),
             parking_read, datetime.now(UTC)],
        )  # fmt: skip
        conn.execute("COMMIT")

    by_reason = pd.DataFrame(reasons.most_common(), columns=["reason", "messages"])
    metadata = {
        "staged_events": staged,
        "published_events": published,
        "applied_events": applied,
        "staged_per_s": round(staged / SECONDS_PER_HOUR, 4),
        "published_per_s": round(published / SECONDS_PER_HOUR, 4),
        "applied_per_s": round(applied / SECONDS_PER_HOUR, 4),
        # Numeric even without samples, so the plots keep one point per hour; lag_samples says 0.
        "lag_p50_ms": float(lag_p50 or 0.0),
        "lag_p95_ms": float(lag_p95 or 0.0),
        "lag_p99_ms": float(lag_p99 or 0.0),
        "lag_samples": len(lags),
        "retries": retries,
        "dead_letters": dead_letters,
        **queue_depth_metadata(depth),
        "by_source": dg.MetadataValue.md(f"| ERP | MES | RECON |\n|---|---|---|\n| {erp} | {mes} | {recon} |"),
        "dead_letters_by_reason": dg.MetadataValue.md(md_table(by_reason)),
    }
    if notes:
        metadata["note"] = "; ".join(notes)
    return dg.MaterializeResult(metadata=metadata)
