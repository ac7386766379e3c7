"""The schedules read the configuration when they tick: the plant's first hour, the batch sync's period."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from invsync_pipeline.resources import InvsyncResource
from invsync_pipeline.schedules import batch_sync_schedule, hourly_reconciliation_schedule
from invsync_pipeline_tests.recon_plant import set_config


def _tick(schedule, at: datetime):
    context = dg.build_schedule_context(scheduled_execution_time=at, resources={"invsync": InvsyncResource()})
    return schedule(context)


def test_the_hourly_schedule_asks_for_the_hour_that_closed_from_the_plants_first_hour_on(settings):
    set_config(Path(os.environ["INVSYNC_CONFIG"]), reconciliation={"first_hour": "2026-12-01-06:00"})

    before = _tick(hourly_reconciliation_schedule, datetime(2026, 12, 1, 6, 5, tzinfo=UTC))
    first = _tick(hourly_reconciliation_schedule, datetime(2026, 12, 1, 7, 5, tzinfo=UTC))

    assert isinstance(before, dg.SkipReason) and "before the plant's first hour 2026-12-01-06:00" in before.skip_message
    assert (first.partition_key, first.run_key) == ("2026-12-01-06:00", "2026-12-01-06:00")


def test_the_batch_sync_runs_every_configured_hours(settings):
    set_config(Path(os.environ["INVSYNC_CONFIG"]), cutover={"batch_sync_every_hours": 3})

    ticks = {hour: _tick(batch_sync_schedule, datetime(2026, 12, 1, hour, tzinfo=UTC)) for hour in range(6)}

    assert [hour for hour, result in ticks.items() if isinstance(result, dg.RunRequest)] == [0, 3]
    assert ticks[3].run_config == {"ops": {"copy_erp_stock_to_mes": {"config": {"at": "2026-12-01T03:00:00+00:00"}}}}
