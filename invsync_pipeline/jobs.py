"""Jobs that sensors, schedules and backfills launch."""

import dagster as dg

from invsync_pipeline.assets.cutover import cutover_comparison
from invsync_pipeline.assets.exports import analyst_exports
from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.review_decisions import review_decisions
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.contract import instant_of
from invsync_pipeline.cutover.batch_sync import run_batch_sync
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource

# With the exports: an hour staged again after it was reconciled (a late movement, one a correction
# re-sent) reaches the analysts' Parquet files at once.
stage_and_ledger_job = dg.define_asset_job(
    name="stage_and_ledger",
    selection=dg.AssetSelection.assets(staged_inventory_events, transaction_ledger, analyst_exports),
    description="Load an hour of staged events into DuckDB, build its transaction ledger, and export it.",
)

hourly_reconciliation_job = dg.define_asset_job(
    name="hourly_reconciliation",
    selection=dg.AssetSelection.groups("staging", "ledger", "reconciliation", "operations"),
    description="The whole hourly graph: staging, ledger, snapshots, variances, investigation, corrections, report.",
)

review_decisions_job = dg.define_asset_job(
    name="apply_review_decisions",
    selection=dg.AssetSelection.assets(review_decisions),
    description="Carry out supervisors' approvals between the hourly runs (the review_decisions_sensor launches it).",
)

cutover_daily_job = dg.define_asset_job(
    name="cutover_daily",
    selection=dg.AssetSelection.assets(cutover_comparison),
    description="Compare the batch sync, the event-driven path and the ERP for a day, and check the go-live gate.",
)


# The batch sync writes to the MES only (never DuckDB), so it needs no place in the writer pool.
class BatchSyncConfig(dg.Config):
    at: str | None = None  # RFC 3339; default: now (the schedule passes its own tick time)


@dg.op(tags={"kind": "batch_sync"})
def copy_erp_stock_to_mes(
    context: dg.OpExecutionContext, config: BatchSyncConfig, invsync: InvsyncResource, erp: ErpResource,
    mes: MesResource,
) -> None:  # fmt: skip
    """Copy ERP stock to the live MES: what the old batch sync does, kept running during shadow mode."""
    at = instant_of(config.at) if config.at else None
    live, books = mes.open("live"), erp.open()
    try:
        summary = run_batch_sync(invsync.settings(), live, books, at)
    finally:
        live.close()
        books.dispose()
    context.log.info("batch sync: %s", summary)
    context.log_event(dg.AssetObservation(asset_key="live_mes_stock", metadata={k: str(v) for k, v in summary.items()}))
    if summary.get("failed"):
        raise dg.Failure(f"batch sync: {summary['failed']} postings failed; first: {summary.get('first_failure')}")


@dg.job(
    description="The old batch sync: ERP stock to the live MES (every type in shadow mode; out of scope once live)."
)
def batch_sync_job() -> None:
    copy_erp_stock_to_mes()
