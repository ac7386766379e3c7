"""analyst_exports over a range of hours, run again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from invsync_pipeline.assets.exports import analyst_exports
from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.messaging.staged_log import StagedEventLog
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline_tests.factories import event

# 26 recent hours: more than one chunk of 24, and inside the contract's horizon.
FIRST = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
HOURS = [FIRST + timedelta(hours=n) for n in range(26)]


def _key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def test_a_backfill_run_again_exports_each_hour_of_its_range_once(settings):
    log = StagedEventLog(settings.staged_dir)
    for n, hour in enumerate(HOURS):
        body = event(transaction_id=f"T-{n}", timestamp=f"{hour:%Y-%m-%dT%H}:10:00Z")
        line = json.dumps({**body, "received_at": body["timestamp"], "routing_key": "inventory.wh01.raw.receipt"})
        log.write_events({_key(hour): [line]}, f"{n:04d}-a")
    tags = {"dagster/asset_partition_range_start": _key(HOURS[0]),
            "dagster/asset_partition_range_end": _key(HOURS[-1])}  # fmt: skip
    resources = {"invsync": InvsyncResource(), "warehouse": WarehouseResource()}
    assets = [staged_inventory_events, transaction_ledger, analyst_exports]
    assert dg.materialize(assets, tags=tags, resources=resources).success

    # Again: staging touches every hour of the range; each is still exported once, by its chunk.
    again = dg.materialize(assets, tags=tags, resources=resources)

    assert again.success
    exported = [m.materialization.metadata for m in again.get_asset_materialization_events()
                if m.asset_key == analyst_exports.key]  # one per hour of the range, the same metadata  # fmt: skip
    assert len(exported) == 26
    assert {m["earlier_hours_exported_again (sum of hours)"].value for m in exported} == {0}
    assert len(list((settings.home / "exports" / "staging.inventory_events").glob("hour=*/data.parquet"))) == 26
