"""Operations checks: events keep arriving during working hours, and nothing rots in the parking queue.

Both look at the system as it is now, not at one hour: they are not partitioned and ignore any
partition of the run they are part of.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from invsync_pipeline.assets.metrics import flow_metrics
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.messaging import dlq
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.settings import clock_window
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL

_OLDEST_LISTED = 5


def in_working_hours(now: datetime, start: int, end: int) -> bool:
    """Whether ``now`` falls in [start, end) minutes of the UTC day (settings.clock_window)."""
    minute = now.astimezone(UTC).hour * 60 + now.astimezone(UTC).minute
    return start <= minute < end if start <= end else (minute >= start or minute < end)


@dg.asset_check(asset=staged_inventory_events, blocking=False, pool=DUCKDB_WRITER_POOL)
def staged_events_fresh(
    context: dg.AssetCheckExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Events keep arriving: the newest staged event was received less than 90 minutes ago.

    Looks at the newest `received_at` in `staging.inventory_events` (any hour). During working
    hours (`checks.working_hours`, UTC, default 06:00-22:00) an older one — or none at all —
    warns: the ledger tap, the sensor or the publishers may have stopped. Outside working hours
    a quiet plant is normal and the check passes, saying so. `checks.freshness_minutes` changes
    the 90 minutes (or INVSYNC_FRESHNESS_MINUTES, INVSYNC_WORKING_HOURS)."""
    checks = invsync.settings().checks
    max_minutes = checks.freshness_minutes
    spec = checks.working_hours
    start, end = clock_window(spec)
    now = datetime.now(UTC)
    with warehouse.connect(read_only=True) as conn:
        newest = conn.execute("SELECT max(received_at) FROM staging.inventory_events").fetchone()[0]
    age_minutes = (now - newest).total_seconds() / 60 if newest is not None else None
    stale = age_minutes is None or age_minutes > max_minutes
    working = in_working_hours(now, start, end)
    metadata = {
        "newest_received_at": newest.isoformat() if newest is not None else None,
        "age_minutes": round(age_minutes, 1) if age_minutes is not None else None,
        "max_minutes": max_minutes,
        "working_hours_utc": spec,
        "in_working_hours": working,
    }
    if stale and not working:
        metadata["note"] = f"outside working hours ({spec} UTC): no recent events is expected, not a failure"
    elif age_minutes is None:
        metadata["note"] = "staging.inventory_events has no rows: nothing was ever staged"
    return dg.AssetCheckResult(passed=not stale or not working, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)


@dg.asset_check(asset=flow_metrics)
def parking_not_stale(context: dg.AssetCheckExecutionContext, invsync: InvsyncResource) -> dg.AssetCheckResult:
    """No message waits in the parking queue longer than 4 hours after its event time.

    A parked message is an ERP/MES movement that never reached the MES; after a few hours the
    books drift further apart every hour it stays. Fails (error) when any parked message's event
    timestamp is older than `checks.parked_max_hours` (default 4; INVSYNC_PARKED_MAX_HOURS); the
    oldest are listed with why they were parked, for `invsync dlq show|replay|discard`. Also
    fails when the broker cannot be reached, since then nobody can tell."""
    max_hours = invsync.settings().checks.parked_max_hours
    now = datetime.now(UTC)
    cutoff = now - timedelta(hours=max_hours)
    try:
        parked = dlq.browse(invsync.settings())
    except dlq.BROKER_UNREACHABLE as exc:
        context.log.warning(f"parking queue not read: {exc}")
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"max_hours": max_hours, "note": f"parking queue not read (broker unreachable): {exc}"},
        )
    timed = [(ts, p) for p in parked if (ts := p.event_at) is not None]
    stale = sorted(((ts, p) for ts, p in timed if ts < cutoff), key=lambda item: item[0])
    lines = ["| transaction_id | event time | hours parked since event | reason |", "|---|---|---|---|"]
    lines += [
        f"| {p.transaction_id} | {ts.isoformat()} | {(now - ts).total_seconds() / 3600:.1f} "
        f"| {p.reason.replace('|', '/')} |"
        for ts, p in stale[:_OLDEST_LISTED]
    ]
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "max_hours": max_hours,
            "parked": len(parked),
            "parked_without_event_time": len(parked) - len(timed),
            "stale": len(stale),
            "oldest_stale": dg.MetadataValue.md("\n".join(lines) if stale else "_none_"),
        },
    )


OPERATIONS_CHECKS = [staged_events_fresh, parking_not_stale]
