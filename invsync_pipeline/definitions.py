"""The one Definitions of invsync: assets, checks, jobs, sensors and resources.

``defs`` is what `dagster dev` and the daemon load. ``build_defs`` makes the same Definitions
with other resources: the plant's own ERP or MES (docs/integrating.md), or the demo's.
"""

import dagster as dg

from invsync_pipeline.assets.corrections import auto_corrections, correction_audit_log
from invsync_pipeline.assets.cutover import cutover_comparison
from invsync_pipeline.assets.exports import analyst_exports
from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.metrics import flow_metrics
from invsync_pipeline.assets.reports import variance_report
from invsync_pipeline.assets.review_decisions import review_decisions
from invsync_pipeline.assets.snapshots import erp_inventory_snapshot, mes_inventory_snapshot
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.assets.variances import inventory_variances, variance_investigation
from invsync_pipeline.checks.asset_checks import ASSET_CHECKS
from invsync_pipeline.checks.cutover import go_live_readiness
from invsync_pipeline.checks.freshness import OPERATIONS_CHECKS
from invsync_pipeline.jobs import (
    batch_sync_job,
    cutover_daily_job,
    hourly_reconciliation_job,
    review_decisions_job,
    stage_and_ledger_job,
)
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource
from invsync_pipeline.schedules import batch_sync_schedule, cutover_daily_schedule, hourly_reconciliation_schedule
from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor
from invsync_pipeline.sensors.queue_health import queue_health_sensor
from invsync_pipeline.sensors.review_decisions import review_decisions_sensor
from invsync_pipeline.sensors.run_failures import run_failure_alert_sensor


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The reference implementations: SAP-shaped tables and the MES REST API, configured by the
    settings. Their secrets (INVSYNC_MES_TOKEN, INVSYNC_ERP_URL) come from the environment
    through Settings when a run opens them, so a run that needs no MES (a backfill of hours
    already observed) needs no token either."""
    return {"invsync": InvsyncResource(), "warehouse": WarehouseResource(), "erp": ErpResource(), "mes": MesResource()}


def build_defs(**resources: dg.ConfigurableResource) -> dg.Definitions:
    """The Definitions, with ``resources`` in place of the defaults of the same key."""
    return dg.Definitions(
        assets=[
            staged_inventory_events,
            transaction_ledger,
            erp_inventory_snapshot,
            mes_inventory_snapshot,
            inventory_variances,
            variance_investigation,
            auto_corrections,
            correction_audit_log,
            variance_report,
            analyst_exports,
            flow_metrics,
            cutover_comparison,
            review_decisions,
        ],
        asset_checks=[*ASSET_CHECKS, *OPERATIONS_CHECKS, go_live_readiness],
        jobs=[stage_and_ledger_job, hourly_reconciliation_job, cutover_daily_job, batch_sync_job, review_decisions_job],
        sensors=[ledger_tap_sensor, queue_health_sensor, run_failure_alert_sensor, review_decisions_sensor],
        schedules=[hourly_reconciliation_schedule, cutover_daily_schedule, batch_sync_schedule],
        resources={**default_resources(), **resources},
        # Steps of one run go one after the other in one process: DuckDB takes one writer, and the
        # pool `duckdb_writer` only keeps runs apart, not the steps inside a run.
        executor=dg.in_process_executor,
    )


defs = build_defs()
