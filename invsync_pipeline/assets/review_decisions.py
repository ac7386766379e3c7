"""review_decisions: carry out supervisors' decisions between the hourly runs.

The review decisions sensor launches it when an approval waits (it reads the review store,
never DuckDB); being in the DuckDB writers' pool it waits for a running hourly run instead of
competing for the lock. ``auto_corrections`` carries out the same decisions at the start of
every run, so whichever run comes first applies an approval, once.
"""

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from invsync_pipeline.plant_scope import ASSET_KEY_PREFIX
from invsync_pipeline.recon.review_store import ReviewStore, review_store
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource, open_systems
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import MesError
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL


def carry_out_reviews(
    context: dg.AssetExecutionContext,
    settings: Settings,
    store: ReviewStore,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dict[str, int]:
    """Once per run, before the hours: carry out the supervisors' approvals (checked against
    the systems first), close held items whose variance resolved by itself meanwhile (a late
    movement arrived), and copy the store's decisions and audit rows into DuckDB for analysts.
    The first two are best effort: with a system out of reach they wait for the next run."""
    from invsync_pipeline.recon.review import adopt_held, apply_decisions, close_resolved, copy_to_warehouse

    applied: list[tuple[str, str]] = []
    resolved: list[tuple[str, str]] = []
    with warehouse.connect() as conn:
        adopted = adopt_held(conn, store, settings.review.recent_hours)
        try:
            with open_systems(erp, mes) as systems:
                applied = apply_decisions(settings, conn, store, systems, who="auto:hourly")
                resolved = close_resolved(store, systems, who="auto:hourly")
        except (ConnectionError, OSError, MesError, SQLAlchemyError) as exc:
            context.log.warning(f"review decisions not carried out yet (a system is out of reach): {exc}")
        copied = copy_to_warehouse(conn, store)
    for cid, outcome in applied:
        context.log.info(f"{cid} (a supervisor's approval): {outcome}")
    for cid, reason in resolved:
        context.log.info(f"{cid} closed as resolved: {reason}")
    return {
        "decisions_carried_out": len(applied),
        "resolved_by_themselves": len(resolved),
        "review_rows_copied": copied,
        "held_items_adopted": adopted,
    }


@dg.asset(
    group_name="review",
    kinds={"duckdb", "sqlite"},
    pool=DUCKDB_WRITER_POOL,
    key_prefix=ASSET_KEY_PREFIX,
    metadata={"dagster/table_name": "recon.corrections"},
)
def review_decisions(
    context: dg.AssetExecutionContext,
    invsync: InvsyncResource,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Supervisors' approvals from the review page or `invsync review approve`, carried out:
    each is checked against the ERP and the MES again (a variance that resolved itself meanwhile
    is closed as `resolved`, nothing posted), then applied once through the exchange. Held items
    that resolved by themselves are closed, and every decision and audit row is copied into
    recon.corrections and recon.correction_audit_log for analysts. Launched by the
    review_decisions_sensor when an approval waits; the hourly run does the same first."""
    settings = invsync.settings()
    with review_store(settings) as store:
        return dg.MaterializeResult(metadata=carry_out_reviews(context, settings, store, erp, mes, warehouse))
