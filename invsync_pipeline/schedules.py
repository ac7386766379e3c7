"""Schedules: reconcile each hour after it closes; compare the cutover daily; run the old batch sync.

Each reads the configuration when it ticks, never when the code loads.
"""

from datetime import timedelta

import dagster as dg

from invsync_pipeline.jobs import batch_sync_job, cutover_daily_job, hourly_reconciliation_job
from invsync_pipeline.partitions import partition_key_of
from invsync_pipeline.resources import InvsyncResource


# Five minutes after the hour: the sensor drains every 30 s and the worker applies within
# seconds, so the hour's events are staged and synced by then; whatever is not is reported as
# a timing cause (in_flight, pending_sync, late_delivery) and never corrected.
@dg.schedule(
    job=hourly_reconciliation_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Reconciles the hour that just closed, at HH:05 UTC, from reconciliation.first_hour on. "
    "Turn it on where the ERP and MES are reachable.",
)
def hourly_reconciliation_schedule(context: dg.ScheduleEvaluationContext, invsync: InvsyncResource):
    closed = context.scheduled_execution_time.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    key = partition_key_of(closed)
    first = invsync.settings().reconciliation.first_hour
    if key < first:  # the keys sort as text: YYYY-MM-DD-HH:MM
        return dg.SkipReason(f"{key} is before the plant's first hour {first} (reconciliation.first_hour)")
    return dg.RunRequest(run_key=key, partition_key=key)


@dg.schedule(
    job=batch_sync_job,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Runs the batch sync every cutover.batch_sync_every_hours hours; on during shadow mode.",
)
def batch_sync_schedule(context: dg.ScheduleEvaluationContext, invsync: InvsyncResource):
    every = invsync.settings().cutover.batch_sync_every_hours
    tick = context.scheduled_execution_time
    if tick.hour % every:
        return dg.SkipReason(f"the batch sync runs every {every} hours (cutover.batch_sync_every_hours)")
    at = tick.isoformat()
    return dg.RunRequest(
        run_key=at, run_config={"ops": {"copy_erp_stock_to_mes": {"config": {"at": at}}}}, tags={"batch_sync_at": at}
    )


cutover_daily_schedule = dg.build_schedule_from_partitioned_job(
    cutover_daily_job,
    hour_of_day=0,
    minute_of_hour=30,
    name="cutover_daily_schedule",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Compares the day that just closed, at 00:30 UTC.",
)
