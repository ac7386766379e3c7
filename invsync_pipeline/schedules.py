"""The hourly schedule: reconcile each hour a few minutes after it closes."""

import dagster as dg

from invsync_pipeline.jobs import hourly_reconciliation_job

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
