"""ledger_tap_sensor: drain RabbitMQ into the staged event log and ask for the hours that changed.

The sensor never opens DuckDB. Each tick it (1) drains the ledger tap for a bounded time,
writing durable segments before acking, (2) finds the segments written since its cursor, even
those of an earlier tick that failed before its cursor was stored, and (3) requests one run per
closed hour that got new events. An hour that is still open waits in the cursor until it
closes. Run keys name the newest segment of the hour, so a repeated tick asks for nothing new.
"""

import contextlib
import json
import traceback
from datetime import UTC, datetime

import dagster as dg

from invsync_pipeline.jobs import stage_and_ledger_job
from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.messaging.topology import apply_topology
from invsync_pipeline.partitions import hour_bounds, hourly_partitions
from invsync_pipeline.resources import InvsyncResource


def parse_cursor(raw: str | None) -> dict:
    if not raw:
        return {"last_segment": "", "waiting": {}}
    cursor = json.loads(raw)
    cursor.setdefault("last_segment", "")
    cursor.setdefault("waiting", {})
    return cursor


def plan_runs(
    cursor: dict, staged_log: StagedEventLog, now: datetime, first_hour: datetime
) -> tuple[list[tuple[str, str]], dict, list[str]]:
    """(partition, newest segment) pairs to run now, the next cursor, and hours ignored."""
    newest = staged_log.partitions_with_segments_after(cursor["last_segment"])
    waiting: dict[str, str] = dict(cursor["waiting"])
    for key, seg in newest.items():
        if seg > waiting.get(key, ""):
            waiting[key] = seg
    ready, ignored = [], []
    for key in sorted(waiting):
        start, end = hour_bounds(key)
        if start < first_hour:
            ignored.append(key)
            del waiting[key]
        elif end <= now:
            ready.append((key, waiting.pop(key)))
    all_segments = [cursor["last_segment"], *newest.values()]
    next_cursor = {"last_segment": max(all_segments), "waiting": waiting}
    return ready, next_cursor, ignored


@dg.sensor(
    job=stage_and_ledger_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def ledger_tap_sensor(context: dg.SensorEvaluationContext, invsync: InvsyncResource) -> dg.SensorResult:
    """Drains RabbitMQ's ledger tap into the staged event log (durable before ack) and requests
    a stage_and_ledger run for every closed hour that received events. Never writes DuckDB."""
    settings = invsync.settings()
    try:
        connection = connect(settings)
        try:
            # Declared on every tick, as pika's examples do after connecting: a broker that lost
            # its definitions (or a new machine) gets them back, and declaring is idempotent.
            apply_topology(settings, connection)
            result = drain_ledger_tap(settings, connection=connection)
        finally:
            with contextlib.suppress(Exception):  # a connection lost mid-drain cannot be closed
                if connection.is_open:
                    connection.close()
        context.log.info(result.summary())
        if result.reconnects:
            context.log.warning(f"the broker connection was lost {result.reconnects} times during the drain; "
                                "messages not acked were delivered again")  # fmt: skip
    except BrokerUnavailable as exc:
        # Segments already on disk still get their runs; the broker is retried next tick.
        context.log.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - invariant 3: one drain error never fails the tick
        # Whatever went wrong, nothing was acked that is not on disk; the broker delivers it again
        # next tick, and the segments already on disk still get their runs now.
        context.log.error(f"the drain stopped early: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    cursor = parse_cursor(context.cursor)
    first_hour = max(hourly_partitions.start.astimezone(UTC), hour_bounds(settings.reconciliation.first_hour)[0])
    ready, next_cursor, ignored = plan_runs(cursor, StagedEventLog(settings.staged_dir), datetime.now(UTC), first_hour)
    for key in ignored:
        context.log.warning(f"events staged for {key}, before the first hour {settings.reconciliation.first_hour}; "
                            "not loaded")  # fmt: skip
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"staged:{key}:{segment}", partition_key=key, tags={"invsync/newest_segment": segment}
            )  # fmt: skip
            for key, segment in ready
        ],
        cursor=json.dumps(next_cursor, sort_keys=True),
    )
