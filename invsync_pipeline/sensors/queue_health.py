"""queue_health_sensor: sample every queue each minute and raise one alert per incident."""

import dagster as dg

from invsync_pipeline.messaging.connection import BrokerUnavailable
from invsync_pipeline.resources import InvsyncResource


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def queue_health_sensor(context: dg.SensorEvaluationContext, invsync: InvsyncResource) -> dg.SkipReason:
    """Samples what every queue of the topology holds, ready, unacked and in its dead-letter
    path (management API where enabled, else rabbitmqctl, else passive declares that see ready
    messages only), keeps the samples in ops.sqlite, and raises one alert per incident: a queue
    too deep, a plant queue or the ledger tap with nobody consuming it, one growing sample after
    sample, or dead letters stranded in a queue's dead-letter path. Requests no runs and never
    opens DuckDB."""
    from invsync_pipeline.ops.queue_health import broker_incident, check_queues

    settings = invsync.settings()
    try:
        samples, findings, raised = check_queues(settings)
    except BrokerUnavailable as exc:
        broker_incident(settings, str(exc))  # one alert per outage, not one per minute
        return dg.SkipReason(f"broker unreachable: {exc}")
    held = {s.queue: s.ready if s.total is None else s.total for s in samples}
    summary = ", ".join(f"{queue}={n}" for queue, n in sorted(held.items(), key=lambda item: -item[1])[:3])
    for finding in findings:
        context.log.warning(f"{finding.rule}: {finding.message}")
    return dg.SkipReason(
        f"{len(samples)} queues sampled ({summary}); {len(findings)} findings, {len(raised)} new alerts"
    )
