"""Schedules: reconcile each hour after it closes; compare the cutover daily; run the old batch sync."""

import dagster as dg

from invsync_pipeline.jobs import batch_sync_job, cutover_daily_job, hourly_reconciliation_job
from invsync_pipeline.settings import ConfigError, load_settings

# Five minutes after the hour: the sensor drains every 30 s and the worker applies within
# seconds, so the hour's events are staged and synced by then; whatever is not is reported as
# a timing cause (pending_sync, late_delivery) and never corrected.
hourly_reconciliation_schedule = dg.build_schedule_from_partitioned_job(
    hourly_reconciliation_job,
    minute_of_hour=5,
    name="hourly_reconciliation_schedule",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Reconciles the hour that just closed, at HH:05 UTC. Turn it on where the ERP and MES are reachable.",
)


def _every_hours() -> int:
    try:
        return load_settings().cutover.batch_sync_every_hours
    except ConfigError:
        return 2  # the definitions still load; the run itself reports the broken config


@dg.schedule(
    job=batch_sync_job,
    cron_schedule=f"0 */{_every_hours()} * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Runs the batch sync every cutover.batch_sync_every_hours hours; on during shadow mode.",
)
def batch_sync_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    at = context.scheduled_execution_time.isoformat()
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
