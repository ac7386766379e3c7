"""flow_metrics and the operations checks on a real DuckDB file, a real sync log and the local broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pika
import pytest

from invsync_pipeline.assets.metrics import flow_metrics, percentile
from invsync_pipeline.checks.freshness import OPERATIONS_CHECKS, parking_not_stale, staged_events_fresh
from invsync_pipeline.messaging.retry import REASON_HEADER
from invsync_pipeline.ops.queue_health import QueueSample, record
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.settings import ConfigError
from invsync_pipeline.sync.sync_log import SyncLog, SyncRecord
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event

HOUR = datetime(2026, 11, 24, 10, tzinfo=UTC)
HOUR_KEY = "2026-11-24-10:00"


@pytest.fixture
def warehouse(settings, monkeypatch) -> WarehouseResource:
    for name in ("INVSYNC_FRESHNESS_MINUTES", "INVSYNC_WORKING_HOURS", "INVSYNC_PARKED_MAX_HOURS"):
        monkeypatch.delenv(name, raising=False)
    resource = WarehouseResource()  # warehouse.duckdb under the test's INVSYNC_HOME
    with open_warehouse(resource.resolved_path()):  # creates the tables
        pass
    return resource


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _stage(
    warehouse: WarehouseResource, rows: list[tuple[str, str, datetime, datetime]], published: bool = True
) -> None:
    """(transaction_id, source_system, event_time, received_at) rows, staged in their event's hour;
    published a second before they were received, or without a publish time."""
    values = [
        (t.replace(minute=0, second=0, microsecond=0), tid, t, source, "MES" if source == "RECON" else None,
         "MAT-A", "raw", "receipt", "purchase_receipt", 10, "KG", "WH01/RM01", None, f"DOC-{tid}", "101",
         received - timedelta(seconds=1) if published else None, received, "inventory.wh01.raw.receipt", "seg-1")
        for tid, source, t, received in rows
    ]  # fmt: skip
    with warehouse.connect() as conn:
        conn.executemany(f"INSERT INTO staging.inventory_events VALUES ({', '.join(['?'] * 19)})", values)


def _sync(settings, rows: list[tuple[str, str, datetime, int | None, int]]) -> None:
    """(transaction_id, status, acked_at, lag_ms or None without published_ms, attempts) into sync.sqlite."""
    log = SyncLog(settings.home / "sync.sqlite")
    for tid, status, acked, lag, attempts in rows:
        confirmed = _ms(acked) - 5
        log.record([SyncRecord(tid, f"MES-{tid}", status, "plant.wh01.raw", None if lag is None else confirmed - lag,
                               confirmed - 20, confirmed, _ms(acked), attempts)])  # fmt: skip
    log.close()


def _park(connection: pika.BlockingConnection, queue: str, bodies: list[tuple[bytes, str]]) -> None:
    """(body, reason) straight into the parking queue, as the dead-letter exchange would leave them."""
    channel = connection.channel()
    channel.confirm_delivery()
    for body, reason in bodies:
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers={REASON_HEADER: reason})
        channel.basic_publish("", queue, body, props, mandatory=True)
    channel.close()


def _body(timestamp: datetime, **fields) -> bytes:
    return json.dumps(event(timestamp=timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"), **fields)).encode()


def _materialize(warehouse: WarehouseResource, partition_key: str = HOUR_KEY) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [flow_metrics],
        partition_key=partition_key,
        resources={"invsync": InvsyncResource(), "warehouse": warehouse},
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = result.asset_materializations_for_node("flow_metrics")
    return {k: v.value for k, v in materialization.metadata.items()}


def test_percentile_interpolates_between_ranks_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.broker
def test_flow_metrics_counts_rates_lag_retries_and_dead_letters_of_the_hour(settings, topology, connection, warehouse):
    m = timedelta(minutes=1)
    _stage(warehouse, [
        ("s-1", "ERP", HOUR + 5 * m, HOUR + 6 * m), ("s-2", "ERP", HOUR + 15 * m, HOUR + 16 * m),
        ("s-3", "ERP", HOUR + 25 * m, HOUR + 26 * m), ("s-4", "MES", HOUR + 35 * m, HOUR + 36 * m),
        ("s-5", "RECON", HOUR + 45 * m, HOUR + 46 * m),
        ("s-earlier", "ERP", HOUR - 30 * m, HOUR - 29 * m), ("s-later", "MES", HOUR + 65 * m, HOUR + 66 * m),
    ])  # fmt: skip
    # The hour's events in the sync log: ten applied with lags 100..1000 ms, two of them retried
    # (a-2, a-6); one applied without a publish time (no lag); a duplicate that was retried.
    # Acked when they were, even after the hour: each counts for its event's hour.
    lags = [100 * i for i in range(1, 11)]
    attempts = [1, 1, 2, 1, 1, 1, 3, 1, 1, 1]
    _stage(warehouse, [(tid, "ERP", HOUR + i * m, HOUR + i * m)
                       for i, tid in enumerate([*(f"a-{i}" for i in range(10)), "a-nopub", "d-1"])])  # fmt: skip
    _stage(warehouse, [("raw-1", "ERP", HOUR + 22 * m, HOUR + 22 * m)], published=False)  # around the outbox
    _sync(settings, [(f"a-{i}", "applied", HOUR + (i + 1) * m + 30 * i * m, lag, n)
                     for i, (lag, n) in enumerate(zip(lags, attempts, strict=True))]
          + [("a-nopub", "applied", HOUR + 20 * m, None, 1), ("d-1", "duplicate", HOUR + 21 * m, 50_000, 2),
             # Events of other hours, acked inside this one: not this hour's movements.
             ("s-earlier", "applied", HOUR + 1 * m, 99_000, 4), ("s-later", "applied", HOUR + 59 * m, 99_000, 4),
             ("unstaged", "applied", HOUR + 30 * m, 99_000, 4)])  # fmt: skip
    _park(connection, topology.parking, [
        (_body(HOUR + 15 * m, transaction_id="p-1"), "invalid: quantity"),
        (_body(HOUR + 40 * m, transaction_id="p-2"), "failed 3 retries in plant.wh01.raw"),
        (_body(HOUR + 50 * m, transaction_id="p-3"), "failed 3 retries in plant.wh01.raw"),
        (_body(HOUR + 65 * m, transaction_id="p-later"), "invalid: quantity"),
        (b"not json", "invalid: not JSON"),
    ])  # fmt: skip

    meta = _metadata(_materialize(warehouse))

    assert (meta["staged_events"], meta["published_events"], meta["applied_events"]) == (18, 17, 11)
    assert meta["staged_per_s"] == round(18 / 3600, 4) and meta["applied_per_s"] == round(11 / 3600, 4)
    assert meta["published_per_s"] == round(17 / 3600, 4)
    # Linear between ranks over 10 sorted lags: p50 at rank 4.5, p95 at 8.55, p99 at 8.91.
    assert (meta["lag_p50_ms"], meta["lag_p95_ms"], meta["lag_p99_ms"]) == pytest.approx((550.0, 955.0, 991.0))
    assert meta["lag_samples"] == 10
    assert meta["retries"] == 3  # a-2, a-6 and the duplicate
    assert meta["dead_letters"] == 3
    assert "| failed 3 retries in plant.wh01.raw | 2 |" in meta["dead_letters_by_reason"]
    assert "| invalid: quantity | 1 |" in meta["dead_letters_by_reason"]
    assert meta["note"].startswith("no queue samples in this hour")

    _materialize(warehouse)  # a re-run replaces the hour's row
    with warehouse.connect(read_only=True) as conn:
        rows = conn.execute(
            """SELECT staged_events, staged_erp, staged_mes, staged_recon, applied_events, lag_p99_ms, retries,
                      dead_letters, dead_letters_by_reason, parking_read FROM ops.flow_metrics"""
        ).fetchall()
    assert len(rows) == 1
    *counts, by_reason, parking_read = rows[0]
    assert counts == [18, 16, 1, 1, 11, pytest.approx(991.0), 3, 3]
    assert json.loads(by_reason) == {"failed 3 retries in plant.wh01.raw": 2, "invalid: quantity": 1}
    assert parking_read


def test_flow_metrics_of_a_quiet_hour_without_broker_reports_zeros_and_says_why(settings, warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_AMQP_URL", "amqp://127.0.0.1:1/%2F")  # nothing listens there

    meta = _metadata(_materialize(warehouse))

    assert (meta["staged_events"], meta["applied_events"], meta["dead_letters"], meta["lag_samples"]) == (0, 0, 0, 0)
    assert meta["lag_p99_ms"] == 0.0
    assert (meta["queue_samples"], meta["queue_depth_max_work"], meta["queue_depth"]) == (0, 0, "_none_")
    assert all(word in meta["note"] for word in ("broker unreachable", "no sync log", "no queue samples"))
    with warehouse.connect(read_only=True) as conn:
        assert conn.execute("SELECT lag_p50_ms, parking_read FROM ops.flow_metrics").fetchall() == [(None, False)]


def test_flow_metrics_plots_the_queue_depth_sampled_during_the_hour(settings, warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_AMQP_URL", "amqp://127.0.0.1:1/%2F")  # parking is not the point here
    raw, fin, tap, parking = (settings.name(q) for q in ("plant.wh01.raw", "plant.wh01.finished", "ledger.tap",
                                                         "parking"))  # fmt: skip

    def sample(at: datetime, raw_ready: int, raw_unacked: int | None, tap_ready: int, parked: int) -> None:
        source = "passive_declare" if raw_unacked is None else "management_api"
        record(settings, [
            QueueSample(raw, "work", raw_ready, raw_unacked, 0, source),
            QueueSample(fin, "work", 5, 0 if raw_unacked is not None else None, 1, source),
            QueueSample(tap, "tap", tap_ready, 0 if raw_unacked is not None else None, 1, source),
            QueueSample(parking, "parking", parked, 0 if raw_unacked is not None else None, 0, source),
        ], at=at)  # fmt: skip

    m = timedelta(minutes=1)
    sample(HOUR - m, 9_000, 0, 9_000, 9)  # the hour before: not counted
    sample(HOUR + 10 * m, 100, 10, 3, 0)  # a worker that has stopped consuming plant.wh01.raw ...
    sample(HOUR + 20 * m, 400, None, 50, 1)  # ... (a pass without the management API: unacked unknown)
    sample(HOUR + 30 * m, 700, 20, 2, 1)  # ... and the queue keeps growing
    sample(HOUR + 60 * m, 9_000, 0, 9_000, 9)  # the next hour: not counted

    meta = _metadata(_materialize(warehouse))

    assert meta["queue_samples"] == 3
    # Per role, ready + unacked summed over its queues at each pass: max and last value in the hour.
    assert (meta["queue_depth_max_work"], meta["queue_depth_last_work"]) == (700 + 20 + 5, 700 + 20 + 5)
    assert (meta["queue_depth_max_tap"], meta["queue_depth_last_tap"]) == (50, 2)
    assert (meta["queue_depth_max_parking"], meta["queue_depth_last_parking"]) == (1, 1)
    assert (meta["queue_depth_max_retry"], meta["queue_depth_last_retry"]) == (0, 0)
    table = meta["queue_depth"]
    header = "| queue | role | max_ready | max_unacked | max_depth | last_depth | min_consumers |"
    assert table.splitlines()[0] == header
    assert f"| {raw} | work | 700 | 20 | 720 | 720 | 0 |" in table
    assert "no queue samples" not in meta["note"]


def _around_now(before_h: int, after_h: int) -> str:
    now = datetime.now(UTC)
    return f"{now + timedelta(hours=before_h):%H:%M}-{now + timedelta(hours=after_h):%H:%M}"


def _received(warehouse: WarehouseResource, ago: timedelta) -> None:
    at = datetime.now(UTC) - ago
    _stage(warehouse, [("r-1", "ERP", at - timedelta(seconds=5), at)])


def test_stale_staged_events_during_working_hours_warn(warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_WORKING_HOURS", _around_now(-1, 1))
    _received(warehouse, timedelta(hours=3))

    result = staged_events_fresh(dg.build_asset_check_context(), invsync=InvsyncResource(), warehouse=warehouse)

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["age_minutes"].value > 170


def test_fresh_staged_events_pass(warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_WORKING_HOURS", _around_now(-1, 1))
    _received(warehouse, timedelta(minutes=10))

    assert staged_events_fresh(dg.build_asset_check_context(), invsync=InvsyncResource(), warehouse=warehouse).passed


def test_stale_staged_events_outside_working_hours_pass_with_a_note(warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_WORKING_HOURS", _around_now(1, 2))
    monkeypatch.setenv("INVSYNC_FRESHNESS_MINUTES", "30")
    _received(warehouse, timedelta(hours=3))

    result = staged_events_fresh(dg.build_asset_check_context(), invsync=InvsyncResource(), warehouse=warehouse)

    assert result.passed
    assert "outside working hours" in result.metadata["note"].value


def test_working_hours_that_cannot_be_read_say_what_to_set(warehouse, monkeypatch):
    monkeypatch.setenv("INVSYNC_WORKING_HOURS", "6-22")
    with pytest.raises(ConfigError, match=r"working_hours='6-22' \(from INVSYNC_WORKING_HOURS\).*not HH:MM-HH:MM"):
        staged_events_fresh(dg.build_asset_check_context(), invsync=InvsyncResource(), warehouse=warehouse)


@pytest.mark.broker
def test_a_message_parked_for_10_hours_fails_the_parking_check(settings, topology, connection):
    now = datetime.now(UTC)
    _park(connection, topology.parking, [
        (_body(now - timedelta(hours=10), transaction_id="old-1"), "failed 3 retries in plant.wh01.raw"),
        (_body(now - timedelta(hours=1), transaction_id="recent-1"), "invalid: quantity"),
    ])  # fmt: skip

    result = parking_not_stale(dg.build_asset_check_context(), invsync=InvsyncResource())

    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert (result.metadata["parked"].value, result.metadata["stale"].value) == (2, 1)
    oldest = result.metadata["oldest_stale"].value
    assert "old-1" in oldest and "failed 3 retries in plant.wh01.raw" in oldest and "recent-1" not in oldest


@pytest.mark.broker
def test_an_empty_parking_queue_passes(settings, topology):
    result = parking_not_stale(dg.build_asset_check_context(), invsync=InvsyncResource())

    assert result.passed
    assert result.metadata["parked"].value == 0


def test_the_operations_checks_are_exported_and_none_blocks():
    specs = {spec.name: spec for check in OPERATIONS_CHECKS for spec in check.check_specs}
    assert {name: spec.asset_key.to_user_string() for name, spec in specs.items()} == {
        "staged_events_fresh": "staged_inventory_events",
        "parking_not_stale": "flow_metrics",
    }
    assert not any(spec.blocking for spec in specs.values())
