"""Jobs that sensors, schedules and backfills launch."""

import dagster as dg

from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.staging import staged_inventory_events

stage_and_ledger_job = dg.define_asset_job(
    name="stage_and_ledger",
    selection=dg.AssetSelection.assets(staged_inventory_events, transaction_ledger),
    description="Load an hour of staged events into DuckDB and build its transaction ledger.",
)

hourly_reconciliation_job = dg.define_asset_job(
    name="hourly_reconciliation",
    selection=dg.AssetSelection.groups("staging", "ledger", "reconciliation", "operations"),
    description="The whole hourly graph: staging, ledger, snapshots, variances, investigation, corrections, report.",
)
