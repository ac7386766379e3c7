"""Queue health on the real broker: a stalled worker raises one alert, and it clears; a queue
counts everything it holds; dead letters stranded in a retry tier are one incident."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pika
import pytest
import yaml
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.messaging.topology import RETRY_TIER_HEADER, apply_topology, delete_topology
from invsync_pipeline.ops.alerts import alerts
from invsync_pipeline.ops.queue_health import PASSIVE_SOURCE, QueueSample, check_queues, find_stranded, sample
from invsync_pipeline.settings import load_settings
from invsync_pipeline_tests.factories import event, publish_events, queue_depth

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
    settings = load_settings()  # with the webhook's URL, set after the settings fixture ran
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
    from invsync_pipeline.ops.alerts import alerts
    from invsync_pipeline.ops.queue_health import broker_incident

    first = broker_incident(settings, "connection refused")
    assert first is not None
    assert broker_incident(settings, "connection refused") is None  # the same outage: silent
    assert broker_incident(settings, None) is None  # reachable again: the incident closes
    second = broker_incident(settings, "connection refused")
    assert second is not None and second != first
    assert [a["kind"] for a in alerts(settings)].count("broker_unreachable") == 2


def test_a_failed_run_is_one_alert_through_the_alert_channel(settings):
    import dagster as dg

    from invsync_pipeline.ops.alerts import alerts
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


# --- what a queue holds, and dead letters stranded in its dead-letter path ------------------------


@pytest.fixture
def quorum_topology(settings, connection):
    """The topology as quorum queues (at-least-once dead-lettering), in the config file so the
    CLI sees it too; a stranded dead letter counts after 1 s instead of 5 min."""
    path = os.environ["INVSYNC_CONFIG"]
    with open(path) as f:
        config = yaml.safe_load(f)
    config["topology"]["queue_type"] = "quorum"
    config.setdefault("monitoring", {})["stranded_after_seconds"] = 1
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    quorum = load_settings()
    topo = apply_topology(quorum, connection)
    yield quorum, topo
    delete_topology(quorum)


def _sample_when(settings, ready, seconds: float = 30):
    """Sample until ``ready(by_queue)`` holds: quorum queues publish their counts every 5 s."""
    deadline = time.monotonic() + seconds
    while True:
        by_queue = {s.queue: s for s in sample(settings)}
        if ready(by_queue) or time.monotonic() > deadline:
            return by_queue
        time.sleep(0.5)


@pytest.mark.slow
def test_a_quorum_queue_counts_unacked_and_stranded_dead_letters_and_strands_are_one_incident(
    quorum_topology, connection, webhook
):
    settings, topo = quorum_topology
    settings = settings.model_copy(update={"alert_webhook_url": os.environ["INVSYNC_ALERT_WEBHOOK_URL"]})
    raw, retry_1 = settings.name("plant.wh01.raw"), topo.retry_queues[0]
    publish_events(connection, topo.exchange, [event() for _ in range(3)])
    channel = connection.channel()
    assert channel.basic_get(raw)[0] is not None  # taken, not acked: unacked while this channel lives
    # A retried message whose work queue has no requeue binding (deleted, or renamed in the
    # config): its tier's TTL dead-letters it to a requeue exchange that routes it nowhere, and the
    # quorum queue keeps it, neither ready nor unacked, retrying the hand-over for ever.
    channel.basic_publish(topo.retry_exchange, settings.name("plant.wh09.gone"), b"{}",
                          pika.BasicProperties(delivery_mode=2, headers={RETRY_TIER_HEADER: "1"}))  # fmt: skip

    by_queue = _sample_when(settings, lambda q: q[raw].unacked == 1 and q[retry_1].dead_letter == 1)

    assert by_queue[raw].source == "rabbitmqctl", "rabbitmqctl could not reach the local broker's node"
    assert (by_queue[raw].ready, by_queue[raw].unacked, by_queue[raw].dead_letter, by_queue[raw].total) == (2, 1, 0, 3)
    assert (by_queue[retry_1].ready, by_queue[retry_1].unacked, by_queue[retry_1].dead_letter,
            by_queue[retry_1].total) == (0, 0, 1, 1)  # fmt: skip
    # What the passive declares saw: ready messages only, so the stranded one was invisible.
    assert (queue_depth(connection, raw), queue_depth(connection, retry_1)) == (2, 0)

    _, first, _ = check_queues(settings)  # one sample: not yet stranded for 1 s
    time.sleep(1.1)
    _, findings, raised = check_queues(settings)
    _, _, raised_again = check_queues(settings)

    assert not any(f.rule == "stranded" for f in first)
    assert [f.queue for f in findings if f.rule == "stranded"] == [retry_1]
    stranded_alerts = [a for a in alerts(settings) if a["kind"] == "queue_stranded"]
    assert len(stranded_alerts) == 1 and stranded_alerts[0]["alert_id"] in raised and raised_again == []
    assert any("dead-letter path" in hook["text"] for hook in webhook)

    shown = CliRunner().invoke(main, ["queues"])
    assert shown.exit_code == 0, shown.output
    assert "dead-letter" in shown.output.splitlines()[0] and "total" in shown.output.splitlines()[0]
    assert next(line for line in shown.output.splitlines() if line.startswith(retry_1)).split()[2:] == [
        "0", "0", "1", "1", "0", "STRANDED"
    ]  # fmt: skip


def test_without_rabbitmqctl_samples_say_the_dead_letter_path_is_unknown(settings, topology):
    for monitoring in ({"rabbitmqctl": False}, {"rabbitmqctl_node": "invsync-no-such-node@localhost"}):
        changed = load_settings(monitoring={**settings.monitoring.model_dump(), **monitoring})

        samples = sample(changed)

        assert {s.source for s in samples} == {PASSIVE_SOURCE}
        assert all(s.unacked is None and s.dead_letter is None and s.total is None for s in samples)


T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
MARGIN = timedelta(minutes=5)


def _series(counts, *, totals_only: bool = False, every: timedelta = timedelta(minutes=1)):
    """One retry tier's samples a minute apart: dead-letter counts (or totals, when only they are known)."""
    return [
        (
            T0 + i * every,
            QueueSample("retry.2", "retry", 0, None if totals_only else 0, 0, "test", None if totals_only else n, n),
        )  # fmt: skip
        for i, n in enumerate(counts)
    ]


def test_dead_letters_in_every_sample_for_the_margin_are_stranded():
    finding = find_stranded(_series([0, 2, 2, 3, 3, 3, 3]), 300_000, MARGIN)

    assert finding is not None
    assert (finding.queue, finding.rule, finding.severity) == ("retry.2", "stranded", "critical")
    assert "3 message(s)" in finding.message and "5 min" in finding.message


def test_dead_letters_passing_through_or_shorter_than_the_margin_are_not_stranded():
    assert find_stranded(_series([1, 0, 1, 0, 1, 0, 1]), 300_000, MARGIN) is None  # a busy hand-over
    assert find_stranded(_series([0, 0, 4, 4, 4, 4, 4]), 300_000, MARGIN) is None  # 4 min so far
    assert find_stranded(_series([4, 4, 4, 0, 4, 4, 4]), 300_000, MARGIN) is None  # cleared: a new clock
    assert find_stranded(_series([3, 3, 3, 3, 3, 3, 0]), 300_000, MARGIN) is None  # moved on now


def test_where_only_totals_are_known_messages_held_past_ttl_and_margin_are_stranded():
    ttl_ms = 60_000  # retry.1: 1 min, so held 6 min+ without ever falling is past TTL + margin
    assert find_stranded(_series([2, 2, 2, 3, 3, 3, 3, 3], totals_only=True), ttl_ms, MARGIN) is not None
    assert find_stranded(_series([2, 2, 2, 3, 3, 3, 3], totals_only=True), ttl_ms, MARGIN) is None  # 6 min
    assert find_stranded(_series([2, 3, 4, 1, 2, 3, 4, 5], totals_only=True), ttl_ms, MARGIN) is None  # fell
    passive = [(at, QueueSample("retry.2", "retry", 0, None, 0, PASSIVE_SOURCE)) for at, _ in _series([0] * 9)]
    assert find_stranded(passive, ttl_ms, MARGIN) is None  # nothing known, nothing claimed
