"""Operations checks: events keep arriving during working hours, and nothing rots in the parking queue.

Both look at the system as it is now, not at one hour: they are not partitioned and ignore any
partition of the run they are part of.
"""

import os
from datetime import UTC, datetime, timedelta

import dagster as dg

from invsync_pipeline.assets.metrics import PARKING_UNREACHABLE, event_time_of, flow_metrics, read_parking
from invsync_pipeline.assets.staging import DUCKDB_WRITER_POOL, staged_inventory_events
from invsync_pipeline.resources import InvsyncResource, WarehouseResource

FRESHNESS_MINUTES = 90
WORKING_HOURS = "06:00-22:00"  # UTC
PARKED_MAX_HOURS = 4.0
_OLDEST_LISTED = 5


def _positive_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; set a positive number such as {default:g}") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be greater than 0; set e.g. {default:g}")
    return value


def _minute_of_day(text: str, spec: str) -> int:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
    except ValueError:
        hours, minutes = -1, -1
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or (hours == 24 and minutes):
        raise ValueError(f"INVSYNC_WORKING_HOURS={spec!r} is not HH:MM-HH:MM in UTC; set e.g. {WORKING_HOURS!r}")
    return hours * 60 + minutes


def working_hours() -> tuple[int, int, str]:
    """(start, end) in minutes of the UTC day, and the spec they came from. End may be 24:00; a
    start after the end wraps midnight (e.g. 22:00-06:00 for a night shift)."""
    spec = os.environ.get("INVSYNC_WORKING_HOURS", "").strip() or WORKING_HOURS
    start, sep, end = spec.partition("-")
    if not sep:
        raise ValueError(f"INVSYNC_WORKING_HOURS={spec!r} is not HH:MM-HH:MM in UTC; set e.g. {WORKING_HOURS!r}")
    return _minute_of_day(start.strip(), spec), _minute_of_day(end.strip(), spec), spec


def in_working_hours(now: datetime, start: int, end: int) -> bool:
    minute = now.astimezone(UTC).hour * 60 + now.astimezone(UTC).minute
    return start <= minute < end if start <= end else (minute >= start or minute < end)


@dg.asset_check(asset=staged_inventory_events, blocking=False, pool=DUCKDB_WRITER_POOL)
def staged_events_fresh(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Events keep arriving: the newest staged event was received less than 90 minutes ago.

    Looks at the newest `received_at` in `staging.inventory_events` (any hour). During working
    hours (INVSYNC_WORKING_HOURS, UTC, default 06:00-22:00) an older one — or none at all —
    warns: the ledger tap, the sensor or the publishers may have stopped. Outside working hours
    a quiet plant is normal and the check passes, saying so. INVSYNC_FRESHNESS_MINUTES changes
    the 90 minutes."""
    max_minutes = _positive_number("INVSYNC_FRESHNESS_MINUTES", FRESHNESS_MINUTES)
    start, end, spec = working_hours()
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
    timestamp is older than INVSYNC_PARKED_MAX_HOURS (default 4); the oldest are listed with why
    they were parked, for `invsync dlq show|replay|discard`. Also fails when the broker cannot
    be reached, since then nobody can tell."""
    max_hours = _positive_number("INVSYNC_PARKED_MAX_HOURS", PARKED_MAX_HOURS)
    now = datetime.now(UTC)
    cutoff = now - timedelta(hours=max_hours)
    try:
        parked = read_parking(invsync.settings())
    except PARKING_UNREACHABLE as exc:
        context.log.warning(f"parking queue not read: {exc}")
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"max_hours": max_hours, "note": f"parking queue not read (broker unreachable): {exc}"},
        )
    timed = [(ts, p) for p in parked if (ts := event_time_of(p)) is not None]
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
