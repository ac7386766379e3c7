"""run_failure_alert_sensor: a failed run (a blocking check that failed stops its run) is an alert too."""

import dagster as dg

from invsync_pipeline.settings import load_settings


def alert_for_failed_run(run: dg.DagsterRun, message: str) -> bool:
    """Raise one alert for a failed run, through the one alert channel; True when it was new."""
    from invsync_pipeline.ops.alerts import raise_alert

    partition = run.tags.get("dagster/partition") or (
        f"{run.tags['dagster/asset_partition_range_start']}..{run.tags['dagster/asset_partition_range_end']}"
        if "dagster/asset_partition_range_start" in run.tags
        else None
    )
    subject = f"Dagster run of {run.job_name}{' for ' + partition if partition else ''} failed"
    detail = f"{message}\nRun {run.run_id}: open it in the Dagster UI (Runs) for the failed step; docs/runbook.md."
    return raise_alert(load_settings(), f"run:{run.run_id}", "critical", "run_failed", subject, detail)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext) -> None:
    """Sends every failed run to the alert channel (ops.sqlite and INVSYNC_ALERT_WEBHOOK_URL),
    once per run: a blocking data-quality check that fails stops its run, so its failure reaches
    the night shift the same way a queue alert does. Never opens DuckDB."""
    alert_for_failed_run(context.dagster_run, context.failure_event.message or "the run failed")
