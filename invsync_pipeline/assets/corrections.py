"""auto_corrections and correction_audit_log: fix the wrong system by the rules, and keep the trail."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import dagster as dg
import pandas as pd

from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, each_hour, hourly_asset
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.assets.review_decisions import carry_out_reviews
from invsync_pipeline.assets.variances import variance_investigation
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.recon.review_store import ReviewStore, review_store
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource, open_systems
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.systems import Systems

if TYPE_CHECKING:
    from invsync_pipeline.recon.rules import Rules


class CorrectionConfig(dg.Config):
    # "now" in live operation; "next_hour_start" when replaying past hours as if live (demo,
    # tests), so the correction lands in the next hour and that hour's check shows the result.
    effective_at: Literal["now", "next_hour_start"] = "now"
    rules_path: str | None = None  # default: settings reconciliation.rules_path (INVSYNC_RULES, data/rules.yaml)


@hourly_asset(
    deps=[variance_investigation],
    group_name="reconciliation",
    kinds={"duckdb", "rabbitmq"},
    metadata={"dagster/table_name": "recon.corrections"},
)
def auto_corrections(
    context: dg.AssetExecutionContext,
    config: CorrectionConfig,
    invsync: InvsyncResource,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Corrects the system that is wrong, by the source-of-truth rules in data/rules.yaml.

    ERP wins for receipts and shipments, MES wins for WIP consumption (as the rules file says).
    No movement ever counts twice: where the system that has the movements is right, the other
    gets the movements themselves, re-sent under their own transaction_ids (a late original is
    then a duplicate); where it must be an adjustment (source_system RECON, reason correction),
    the movements it compensates are registered so a late original is refused. Either goes
    through the exchange: the sync worker applies it to the MES, the ERP adapter posts it in the
    ERP tables. A critical one (above the % or value limit for its material type or ABC class),
    a cause nobody can settle automatically, or a difference no movement explains (a physical
    count is requested) waits in the review queue (`invsync review serve`, `invsync review list`)
    and raises an alert linking to it. First, supervisors' approvals are carried out (checked
    against the systems again), held items whose variance resolved by itself are closed as
    `resolved`, and the decisions are copied into recon.corrections and the audit log. Timing
    differences (in flight, queued, retrying, late) are never corrected, and no movement is
    corrected twice."""
    settings = invsync.settings()
    with review_store(settings) as store:
        reviews = carry_out_reviews(context, settings, store, erp, mes, warehouse)
        with open_systems(erp, mes) as systems:
            result = each_chunk(
                context, lambda keys: _auto_corrections_hours(keys, config, settings, systems, warehouse, store)
            )
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **reviews})


def _auto_corrections_hours(
    partition_keys: Sequence[str],
    config: CorrectionConfig,
    settings: Settings,
    systems: Systems,
    warehouse: WarehouseResource,
    store: ReviewStore,
) -> dg.MaterializeResult:
    """The corrections of the consecutive hours ``partition_keys`` (one, or a chunk): the findings
    a correction could fix are read in one statement, then each hour is decided, published and
    recorded in order, so an hour sees what the hours before it corrected."""
    from invsync_pipeline.recon.corrections import correction_candidates
    from invsync_pipeline.recon.rules import load_rules

    # A bad rules file stops here, before anything changes.
    rules = load_rules(config.rules_path or settings.reconciliation.rules_path)
    first, last = chunk_bounds(partition_keys)
    with warehouse.connect() as conn:
        candidates = correction_candidates(conn, first, last)
    counts = {"new_corrections": 0, "applied": 0, "held_for_review": 0}
    for key in partition_keys:
        hour = _auto_corrections_hour(key, config, settings, systems, warehouse, store, rules, candidates)
        for name, n in hour.items():
            counts[name] += n
    with warehouse.connect() as conn:
        summary = conn.execute(
            """SELECT status, method, target_system, cause, count(*) AS corrections, sum(abs(quantity)) AS quantity
               FROM recon.corrections WHERE partition_hour BETWEEN ? AND ? GROUP BY ALL ORDER BY ALL""",
            [first, last],
        ).df()
    return dg.MaterializeResult(metadata={**counts, "hour_summary": dg.MetadataValue.md(md_table(summary))})


def _auto_corrections_hour(
    partition_key: str,
    config: CorrectionConfig,
    settings: Settings,
    systems: Systems,
    warehouse: WarehouseResource,
    store: ReviewStore,
    rules: "Rules",
    candidates: pd.DataFrame,
) -> dict[str, int]:
    from invsync_pipeline.recon.corrections import alert_held, apply_corrections, decide, effective_time, record
    from invsync_pipeline.recon.evidence import evidence

    start, end = hour_bounds(partition_key)
    with warehouse.connect() as conn:
        decisions = decide(conn, start, rules, candidates)
        effective = effective_time(end, config.effective_at)
        # Published before they are recorded: a crash in between makes the next run decide and
        # publish them again under the same transaction ids, which everything downstream dedupes.
        to_apply = [c for c in decisions if c.status == "applied"]
        applying = [(c, effective) for c in to_apply]
        published = {e.transaction_id: e for e in apply_corrections(settings, conn, systems, applying)}
        applied, held = len(to_apply), 0
        # The review queue first, with the evidence as DuckDB has it now (the page never opens
        # DuckDB): a crash before DuckDB's commit decides the same ids again, and `hold` skips them.
        for correction in decisions:
            if correction.status == "held_for_review":
                store.hold(correction, evidence(conn, correction, settings.review.recent_hours))
        conn.execute("BEGIN TRANSACTION")
        for correction in decisions:
            at = None
            if correction.status == "applied":
                # A re-sent movement takes effect at its own time; an adjustment at `effective`.
                times = [published[tx].timestamp for tx in correction.explained_by if tx in published]
                at = min(times) if correction.method == "resend" and times else effective
            record(conn, correction, at)
            if correction.status == "held_for_review":
                alert_held(settings, correction)
                held += 1
        conn.execute("COMMIT")
    return {"new_corrections": len(decisions), "applied": applied, "held_for_review": held}


@hourly_asset(
    deps=[auto_corrections],
    group_name="reconciliation",
    kinds={"duckdb", "csv"},
    metadata={"dagster/table_name": "recon.correction_audit_log"},
)
def correction_audit_log(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The append-only trail of every correction: rule, who or what decided, before and after,
    and the transactions that explain it. Rows are appended when a correction is decided
    (auto_corrections), and when a run copies in what supervisors decided on the review page or
    with `invsync review` (the review store's trail); none is ever changed. This asset exports
    the hour's trail as CSV for auditors and checks that the log only grew."""
    return each_hour(context, lambda key: _correction_audit_log_hour(key, context, invsync, warehouse))


def _correction_audit_log_hour(
    partition_key: str, context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, _ = hour_bounds(partition_key)
    out_dir = invsync.settings().reports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with warehouse.connect(read_only=True) as conn:
        trail = conn.execute(
            "SELECT * FROM recon.correction_audit_log WHERE partition_hour = ? ORDER BY logged_at, correction_id",
            [start],
        ).df()
        total = conn.execute("SELECT count(*) FROM recon.correction_audit_log").fetchone()[0]
    path = out_dir / f"audit-{start:%Y-%m-%dT%H}.csv"
    tmp = path.with_suffix(".csv.tmp")
    trail.to_csv(tmp, index=False)
    tmp.replace(path)
    shown = trail[["logged_at", "correction_id", "action", "actor", "target_system", "quantity", "cause"]]
    return dg.MaterializeResult(
        metadata={
            "hour_entries": len(trail),
            "log_entries_total": total,
            "trail": dg.MetadataValue.md(md_table(shown if len(trail) else pd.DataFrame())),
            "csv": dg.MetadataValue.path(str(path)),
        }
    )
