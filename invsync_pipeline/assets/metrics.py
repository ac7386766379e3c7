"""flow_metrics: how the event flow behaved in an hour — throughput, sync lag, retries, dead letters."""

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pika

from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.assets.staging import DUCKDB_WRITER_POOL
from invsync_pipeline.messaging import dlq
from invsync_pipeline.messaging.staged_log import hour_bounds
from invsync_pipeline.partitions import hourly_partitions
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.settings import Settings
from invsync_pipeline.warehouse import SQL_DIR

OPS_SCHEMA_FILE: Path = SQL_DIR / "schema" / "ops.sql"
SECONDS_PER_HOUR = 3600


def event_time_of(parked: dlq.Parked) -> datetime | None:
    """The parked message's event timestamp in UTC, or None when it has none or it cannot be read."""
    try:
        ts = datetime.fromisoformat((parked.event_time or "").replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo else None


def read_parking(settings: Settings) -> list[dlq.Parked]:
    """Every parked message, left in place. Raises ConnectionError or pika's AMQPError when the
    broker (or its parking queue) cannot be reached."""
    return dlq.browse(settings)


PARKING_UNREACHABLE = (ConnectionError, pika.exceptions.AMQPError)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's and DuckDB quantile_cont's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _sync_log_stats(path: Path, start: datetime, end: datetime) -> tuple[int, int, list[float]]:
    """(applied, retries, sorted lags in ms) of the sync log rows acked in [start, end)."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    # Read-only, so a backfill never creates or changes the worker's file.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        applied, retries = conn.execute(
            """SELECT coalesce(sum(status = 'applied'), 0), coalesce(sum(attempts > 1), 0)
               FROM sync_log WHERE acked_ms >= ? AND acked_ms < ?""",
            (start_ms, end_ms),
        ).fetchone()
        lags = [
            float(lag)
            for (lag,) in conn.execute(
                """SELECT confirmed_ms - published_ms FROM sync_log
                   WHERE acked_ms >= ? AND acked_ms < ? AND status = 'applied' AND published_ms IS NOT NULL
                   ORDER BY 1""",
                (start_ms, end_ms),
            )
        ]
    finally:
        conn.close()
    return int(applied), int(retries), lags


@dg.asset(
    deps=[dg.AssetKey("staged_inventory_events")],
    partitions_def=hourly_partitions,
    group_name="operations",
    kinds={"duckdb", "sqlite"},
    pool=DUCKDB_WRITER_POOL,
    metadata={"dagster/table_name": "ops.flow_metrics"},
)
def flow_metrics(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """How the event flow behaved in the hour, plotted hour by hour in the UI.

    Staged events (the hour's rows in `staging.inventory_events`, per source system) and events
    the sync worker applied to the MES (its sync log: status applied, acked inside the hour),
    both also per second. Sync lag = MES confirmation − publish time of the applied events, as
    p50/p95/p99 in ms. Retries = events acked in the hour that needed more than one attempt.
    Dead letters = parked messages whose event time falls in the hour, by reason (0 with a note
    when the broker cannot be reached). One row per hour in `ops.flow_metrics`; re-running an
    hour replaces its row (dead letters are counted as the parking queue is now)."""
    start, end = hour_bounds(context.partition_key)
    settings = invsync.settings()
    notes: list[str] = []

    sync_path = settings.home / "sync.sqlite"
    if sync_path.exists():
        applied, retries, lags = _sync_log_stats(sync_path, start, end)
    else:
        applied, retries, lags = 0, 0, []
        notes.append(f"no sync log at {sync_path}: the sync worker has not run here")

    reasons: Counter[str] = Counter()
    parking_read = True
    try:
        for parked in read_parking(settings):
            ts = event_time_of(parked)
            if ts is not None and start <= ts < end:
                reasons[parked.reason] += 1
    except PARKING_UNREACHABLE as exc:
        parking_read = False
        context.log.warning(f"parking queue not read, dead letters reported as 0: {exc}")
        notes.append(f"parking queue not read (broker unreachable), dead letters reported as 0: {exc}")
    dead_letters = sum(reasons.values())

    lag_p50, lag_p95, lag_p99 = (percentile(lags, q) if lags else None for q in (0.50, 0.95, 0.99))
    with warehouse.connect() as conn:
        conn.execute(OPS_SCHEMA_FILE.read_text())
        conn.execute("BEGIN TRANSACTION")
        staged, erp, mes, recon = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE source_system = 'ERP'),
                      count(*) FILTER (WHERE source_system = 'MES'),
                      count(*) FILTER (WHERE source_system = 'RECON')
               FROM staging.inventory_events WHERE partition_hour = ?""",
            [start],
        ).fetchone()
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
        "applied_events": applied,
        "staged_per_s": round(staged / SECONDS_PER_HOUR, 4),
        "applied_per_s": round(applied / SECONDS_PER_HOUR, 4),
        # Numeric even without samples, so the plots keep one point per hour; lag_samples says 0.
        "lag_p50_ms": float(lag_p50 or 0.0),
        "lag_p95_ms": float(lag_p95 or 0.0),
        "lag_p99_ms": float(lag_p99 or 0.0),
        "lag_samples": len(lags),
        "retries": retries,
        "dead_letters": dead_letters,
        "by_source": dg.MetadataValue.md(f"| ERP | MES | RECON |\n|---|---|---|\n| {erp} | {mes} | {recon} |"),
        "dead_letters_by_reason": dg.MetadataValue.md(md_table(by_reason)),
    }
    if notes:
        metadata["note"] = "; ".join(notes)
    return dg.MaterializeResult(metadata=metadata)
