"""review_decisions_sensor: an approval waiting in the review store launches a run that applies it."""

import dagster as dg

from invsync_pipeline.settings import load_settings


@dg.sensor(
    job_name="apply_review_decisions",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def review_decisions_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Requests a review_decisions run when a supervisor's approval waits, so it is applied
    within a minute or two rather than at the next hourly run. Reads the review store only,
    never DuckDB (one writer: the run waits in the duckdb_writer pool). One run per newest
    waiting decision: the run key is its decision time, so a tick while a run is queued adds none."""
    from invsync_pipeline.recon.review_store import review_store

    with review_store(load_settings()) as store:
        pending = store.pending()
    if not pending:
        return dg.SensorResult(skip_reason="no approval waits to be applied")
    newest = max(item["decided_at"] for item in pending)
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"review-{newest}")], cursor=newest)
