"""Queue health on the real broker: a stalled worker raises one alert, and it clears."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from invsync_pipeline.ops.queue_health import check_queues
from invsync_pipeline.recon.alerts import alerts
from invsync_pipeline_tests.factories import event, publish_events

pytestmark = pytest.mark.broker


@pytest.fixture
def webhook(monkeypatch):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("INVSYNC_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


def test_a_stalled_worker_fires_one_queue_alert_per_incident(settings, topology, connection, webhook):
    publish_events(connection, topology.exchange, [event() for _ in range(20)])  # no worker runs

    _, findings, raised = check_queues(settings)
    _, _, raised_again = check_queues(settings)  # still stalled: the same incident, no new alert

    raw_queue = settings.name("plant.wh01.raw")
    assert any(f.rule == "no_consumer" and f.queue == raw_queue for f in findings)
    assert len(raised) >= 1 and raised_again == []
    assert any("nothing consumes them" in hook["text"] for hook in webhook)
    stored = [a for a in alerts(settings) if a["kind"] == "queue_no_consumer"]
    # One per stalled queue: the plant queue (no worker) and the ledger tap (no sensor).
    assert sorted(a["subject"].split(" in ")[1].split(" ")[0] for a in stored) == sorted(
        [raw_queue, topology.ledger_tap]
    )
    assert all(a["delivery"] == "sent" for a in stored)

    channel = connection.channel()
    channel.queue_purge(raw_queue)  # the worker caught up
    channel.queue_purge(topology.ledger_tap)
    _, findings, raised = check_queues(settings)
    assert findings == [] and raised == []


def test_each_broker_outage_is_one_alert_and_the_next_outage_alerts_again(settings):
    from invsync_pipeline.ops.queue_health import broker_incident
    from invsync_pipeline.recon.alerts import alerts

    first = broker_incident(settings, "connection refused")
    assert first is not None
    assert broker_incident(settings, "connection refused") is None  # the same outage: silent
    assert broker_incident(settings, None) is None  # reachable again: the incident closes
    second = broker_incident(settings, "connection refused")
    assert second is not None and second != first
    assert [a["kind"] for a in alerts(settings)].count("broker_unreachable") == 2


def test_a_failed_run_is_one_alert_through_the_alert_channel(settings):
    import dagster as dg

    from invsync_pipeline.recon.alerts import alerts
    from invsync_pipeline.sensors.run_failures import run_failure_alert_sensor

    @dg.op
    def breaks() -> None:
        raise RuntimeError("staged_events_valid failed: 3 rows break the contract")

    @dg.job
    def reconciliation_that_fails() -> None:
        breaks()

    instance = dg.DagsterInstance.ephemeral()
    result = reconciliation_that_fails.execute_in_process(instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure()
    run_failure_alert_sensor(context)
    run_failure_alert_sensor(context)  # the same run again: no second alert
    raised = [a for a in alerts(settings) if a["kind"] == "run_failed"]
    assert len(raised) == 1
    assert "reconciliation_that_fails" in raised[0]["subject"] and result.dagster_run.run_id in raised[0]["message"]
