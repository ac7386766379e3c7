"""ledger_tap_sensor: drains, asks for closed hours once, keeps open hours, never opens DuckDB."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from invsync_pipeline.resources import InvsyncResource
from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor
from invsync_pipeline_tests.factories import event, publish_events, queue_depth

pytestmark = pytest.mark.broker


def _tick(instance, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"invsync": InvsyncResource()})
    return ledger_tap_sensor(context)


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_sensor_requests_each_closed_hour_once_and_keeps_the_open_hour_waiting(settings, topology, connection):
    now = datetime.now(UTC)
    open_hour = now.replace(minute=0, second=0, microsecond=0)
    closed = [open_hour - timedelta(hours=3), open_hour - timedelta(hours=2)]
    publish_events(connection, topology.exchange, [event(timestamp=_iso(h + timedelta(minutes=5))) for h in closed]
                   + [event(timestamp=_iso(now))])  # fmt: skip
    instance = dg.DagsterInstance.ephemeral()

    first = _tick(instance)

    keys = sorted(r.partition_key for r in first.run_requests)
    assert keys == [h.strftime("%Y-%m-%d-%H:00") for h in closed]
    cursor = json.loads(first.cursor)
    assert list(cursor["waiting"]) == [open_hour.strftime("%Y-%m-%d-%H:00")]
    assert queue_depth(connection, topology.ledger_tap) == 0
    assert not settings.warehouse_path.exists(), "the sensor must never open DuckDB"

    # Nothing new: nothing requested.
    assert _tick(instance, first.cursor).run_requests == []

    # The daemon did not store the cursor (tick failed after launching): the repeat asks for
    # the same run keys, which Dagster de-duplicates.
    repeat = _tick(instance, None)
    assert sorted(r.run_key for r in repeat.run_requests) == sorted(r.run_key for r in first.run_requests)


def test_a_late_event_for_a_closed_hour_requests_that_hour_again(settings, topology, connection):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    publish_events(connection, topology.exchange, [event(timestamp=_iso(hour))])
    instance = dg.DagsterInstance.ephemeral()
    first = _tick(instance)
    assert len(first.run_requests) == 1

    publish_events(connection, topology.exchange, [event(timestamp=_iso(hour + timedelta(minutes=59)))])
    late = _tick(instance, first.cursor)

    assert [r.partition_key for r in late.run_requests] == [hour.strftime("%Y-%m-%d-%H:00")]
    assert late.run_requests[0].run_key != first.run_requests[0].run_key


def test_events_before_the_first_partition_are_staged_but_not_requested(settings, topology, connection):
    publish_events(connection, topology.exchange, [event(timestamp="2019-06-01T10:00:00Z")])

    result = _tick(dg.DagsterInstance.ephemeral())

    assert result.run_requests == []
    assert json.loads(result.cursor)["waiting"] == {}


def test_the_sensor_declares_a_missing_topology_instead_of_failing(settings, connection):
    from invsync_pipeline.messaging.topology import build_topology, delete_topology

    try:
        result = _tick(dg.DagsterInstance.ephemeral())
        assert result.run_requests == []
        assert queue_depth(connection, build_topology(settings).ledger_tap) == 0  # it exists now
    finally:
        delete_topology(settings)
