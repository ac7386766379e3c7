"""inventory_variances and variance_investigation: the hourly three-way check and why it fails."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import groupby

import dagster as dg
import pandas as pd

from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, hourly_asset
from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.assets.snapshots import erp_inventory_snapshot, mes_inventory_snapshot
from invsync_pipeline.contract import instant_of
from invsync_pipeline.cutover.scope import scope_on
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource, open_systems
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import MesApi
from invsync_pipeline.sources.systems import Systems
from invsync_pipeline.warehouse import sql


@hourly_asset(
    deps=[transaction_ledger, erp_inventory_snapshot, mes_inventory_snapshot],
    group_name="reconciliation",
    kinds={"duckdb"},
    metadata={"dagster/table_name": "recon.variances"},
)
def inventory_variances(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The three-way check of the hour, per material x location x unit and system.

    For the ERP and the MES each: beginning balance + the ledger's movements that belong in its
    books − ending balance (from the last cycle count when there was one). Non-zero means the
    system's books and the movements disagree. Also the ERP − MES difference of the ending
    balances, absolute and in % of the larger, and its value where the ERP knows a unit cost.
    `is_variance` marks every row where anything is off."""
    settings = invsync.settings()
    return each_chunk(context, lambda keys: _inventory_variances_hours(keys, settings, warehouse))


def _inventory_variances_hours(
    partition_keys: Sequence[str], settings: Settings, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The three-way check of the consecutive hours ``partition_keys`` (one, or a chunk)."""
    first, last = chunk_bounds(partition_keys)
    hours = [hour_bounds(key)[0] for key in partition_keys]
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        # The first reconciliation of an hour fixes which of its movements it checks (those
        # staged by now); re-runs and backfills check the same ones (sql/recon/variances.sql).
        conn.execute(
            """INSERT INTO recon.reconciled_hours
               SELECT hour, now() FROM unnest(CAST(? AS TIMESTAMPTZ[])) AS t(hour)
               WHERE hour NOT IN (SELECT partition_hour FROM recon.reconciled_hours)""",
            [hours],
        )
        conn.execute("DELETE FROM recon.variances WHERE partition_hour BETWEEN ? AND ?", [first, last])
        conn.execute(f"INSERT INTO recon.variances {sql('recon/variances')}", {"first_hour": first, "last_hour": last})
        # During a cutover's pilot the event-driven path carries only some material types; the
        # others reach the MES by the batch sync, and reconciling them against the ledger would
        # report every one of them. Materials the ERP does not know stay: they are findings.
        # The scope is set per day, so a chunk that spans midnight is cut per day.
        for day, day_hours in groupby(hours, key=lambda hour: hour.date()):
            day_hours = list(day_hours)
            conn.execute(
                "DELETE FROM recon.variances WHERE partition_hour BETWEEN ? AND ? AND material_type IS NOT NULL "
                "AND NOT list_contains(?, material_type)",
                [day_hours[0], day_hours[-1], list(scope_on(settings, day))],
            )
        rows, variances, value = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE is_variance), coalesce(sum(value_difference), 0)
               FROM recon.variances WHERE partition_hour BETWEEN ? AND ?""",
            [first, last],
        ).fetchone()
        top = conn.execute(
            """SELECT partition_hour, material_number, location, unit, erp_end, mes_end, cross_difference,
                      erp_three_way, mes_three_way, pct_difference
               FROM recon.variances WHERE partition_hour BETWEEN ? AND ? AND is_variance
               ORDER BY abs_difference DESC LIMIT 15""",
            [first, last],
        ).df()
        if len(partition_keys) == 1:
            top = top.drop(columns="partition_hour")
        conn.execute("COMMIT")
    accuracy = 100.0 * (rows - variances) / rows if rows else 100.0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "material_locations": rows,
            "variances": variances,
            "accuracy_pct": round(accuracy, 3),
            "value_difference": float(value),
            "largest_variances": dg.MetadataValue.md(md_table(top)),
        }
    )


BACKLOG_COLUMNS = ["partition_hour", "transaction_id", "place", "kind", "material_number", "location", "unit",
                   "quantity_effect", "to_location", "reason", "observed_at"]  # fmt: skip


class InvestigationConfig(dg.Config):
    # Read the pipeline backlog and the MES applied log again instead of reusing what the
    # first investigation of this hour saw (a backfill then may differ from the live run).
    refresh: bool = False


def _backlog_frame(settings, start: datetime, observed: datetime, log) -> pd.DataFrame:
    """The pipeline's held messages of this hour or an earlier one (a movement found in flight
    before is looked at again), or whose hour cannot be read."""
    from invsync_pipeline.messaging.backlog import browse_backlog

    rows = []
    unread = lambda exc: log.warning(f"queues not read, the outbox and the quarantine were: {exc}")  # noqa: E731
    for held in browse_backlog(settings, on_broker_error=unread):
        try:
            ts = instant_of(held.timestamp)
            if ts.tzinfo is not None and ts >= start + timedelta(hours=1):
                continue  # a later hour's: it explains nothing here
        except (AttributeError, ValueError, OverflowError):
            pass  # no readable timestamp: it may explain any hour, so keep it
        rows.append((start, held.transaction_id, held.place, held.kind, held.material_number, held.location,
                     held.unit, float(held.quantity_effect) if held.quantity_effect is not None else None,
                     held.to_location, held.reason, observed))  # fmt: skip
    return pd.DataFrame(rows, columns=BACKLOG_COLUMNS)


def _mes_applied_now(mes: MesApi, start: datetime) -> pd.DataFrame:
    """The MES applied log as it is now, for telling a sync gap from a lost event. Only ids
    applied after the hour's snapshot matter, but the log since the hour's start is small."""
    rows = [
        (row["transaction_id"], instant_of(row["applied_at"]))
        for row in mes.applied_transactions(since=start)
        if row["status"] == "applied"
    ]
    frame = pd.DataFrame(
        [(start, tx, at) for tx, at in rows], columns=["partition_hour", "transaction_id", "applied_at"]
    )
    # Typed even when empty, so DuckDB sees timestamp columns and not strings.
    return frame.astype({"partition_hour": "datetime64[us, UTC]", "transaction_id": "object",
                         "applied_at": "datetime64[us, UTC]"})  # fmt: skip


@hourly_asset(
    deps=[inventory_variances],
    group_name="reconciliation",
    kinds={"duckdb", "rabbitmq"},
    metadata={"dagster/table_name": "recon.variance_investigation"},
)
def variance_investigation(
    context: dg.AssetExecutionContext,
    config: InvestigationConfig,
    invsync: InvsyncResource,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Why each variance of the hour exists, with the transaction_ids that explain it.

    In the order an analyst would look: (a) messages still in the pipeline — queued for the
    MES, in a retry queue, parked, or quarantined by the drain; (b) events the MES applied only
    after its snapshot of the hour (sync gaps); (c) the ERP's material documents and the MES's
    applied log against the ledger — booked in one system and missing in the other, never
    published, or booked under another unit; a difference already there when the hour began is
    `carried_over`; (d) whatever is left is `unexplained`. Timing causes (`is_timing`) resolve
    by themselves and are never corrected. What the pipeline and the MES showed at the first
    investigation of an hour is kept, so re-running the hour gives the same findings."""

    settings = invsync.settings()
    return each_chunk(
        context, lambda keys: _variance_investigation_hours(keys, context, config, settings, erp, mes, warehouse)
    )


def _variance_investigation_hours(
    partition_keys: Sequence[str],
    context: dg.AssetExecutionContext,
    config: InvestigationConfig,
    settings: Settings,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """The investigation of the consecutive hours ``partition_keys`` (one, or a chunk)."""
    first, last = chunk_bounds(partition_keys)
    hours = [hour_bounds(key)[0] for key in partition_keys]
    with warehouse.connect() as conn:
        observed = {
            hour
            for (hour,) in conn.execute(
                "SELECT partition_hour FROM recon.investigation_inputs WHERE partition_hour BETWEEN ? AND ?",
                [first, last],
            ).fetchall()
        }
    if config.refresh or not set(hours) <= observed:
        # An hour looked at for the first time sees the pipeline and the MES as they are now, and
        # looks again at what the hours before it found in flight (recon/in_flight_due.sql reads
        # their explained movements): hour by hour, each explained before the next is observed.
        for hour in hours:
            if config.refresh or hour not in observed:
                with open_systems(erp, mes) as systems:  # the MES the event-driven path writes now
                    _observe(hour, context, settings, systems, warehouse)
            _investigate(warehouse, [hour])
    else:
        # Every hour was looked at before (a re-run, a backfill): what was seen then is stored, so
        # one statement explains the chunk's movements; the causes still go hour by hour, since
        # an hour's carried_over names the findings of the hours before it.
        _investigate(warehouse, hours)
    with warehouse.connect() as conn:
        by_cause = conn.execute(
            """SELECT cause, system, count(*) AS rows, sum(abs(explained_quantity)) AS quantity,
                      sum(len(transaction_ids)) AS transactions
               FROM recon.variance_investigation WHERE partition_hour BETWEEN ? AND ?
               GROUP BY ALL ORDER BY rows DESC, cause, system""",
            [first, last],
        ).df()
        observed_at, backlog_rows = conn.execute(
            """SELECT max(observed_at), coalesce(sum(backlog_rows), 0) FROM recon.investigation_inputs
               WHERE partition_hour BETWEEN ? AND ?""",
            [first, last],
        ).fetchone()
        looked_again = conn.execute(
            "SELECT state, count(*) FROM recon.in_flight_checks WHERE partition_hour BETWEEN ? AND ? GROUP BY ALL",
            [first, last],
        ).fetchall()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(by_cause["rows"].sum()) if len(by_cause) else 0,
            "causes": dg.MetadataValue.md(md_table(by_cause)),
            "unexplained": int(by_cause.loc[by_cause["cause"] == "unexplained", "rows"].sum()) if len(by_cause) else 0,
            "backlog_messages": int(backlog_rows),
            "in_flight": int(by_cause.loc[by_cause["cause"] == "in_flight", "rows"].sum()) if len(by_cause) else 0,
            "looked_at_again": dg.MetadataValue.json(dict(looked_again)),
            "inputs_observed_at": str(observed_at),
        }
    )


def _investigate(warehouse: WarehouseResource, hours: Sequence[datetime]) -> None:
    """recon.explained_movements of the consecutive ``hours`` in one statement, then
    recon.variance_investigation hour by hour, in one transaction."""
    first, last = hours[0], hours[-1]
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM recon.explained_movements WHERE partition_hour BETWEEN ? AND ?", [first, last])
        conn.execute(
            f"INSERT INTO recon.explained_movements {sql('recon/explained_movements')}",
            {"first_hour": first, "last_hour": last},
        )
        for hour in hours:
            conn.execute("DELETE FROM recon.variance_investigation WHERE partition_hour = ?", [hour])
            conn.execute(
                f"INSERT INTO recon.variance_investigation {sql('recon/variance_investigation')}",
                {"partition_hour": hour},
            )
        conn.execute("COMMIT")


def _observe(
    start: datetime, context: dg.AssetExecutionContext, settings: Settings, systems: Systems, warehouse
) -> None:
    """The first look at an hour: the pipeline and the MES as they are now, and whether the
    movements earlier hours found in flight have arrived since. Kept, so re-runs reuse it."""
    from invsync_pipeline.recon.in_flight import look_again

    observed_at = datetime.now(UTC)
    window = settings.reconciliation.in_flight_window_minutes
    # With the broker down, the outbox and the quarantine are still read (what is on disk).
    backlog = _backlog_frame(settings, start, observed_at, context.log)
    applied_now = _mes_applied_now(systems.mes, start)
    with warehouse.connect() as conn:
        due = conn.execute(
            sql("recon/in_flight_due"),
            {"partition_hour": start, "observed_at": observed_at, "window_minutes": window},
        ).df()
    checks = look_again(systems, start, due, set(backlog["transaction_id"].dropna()), observed_at)
    if len(due):
        context.log.info(f"looked again at {len(due)} movement(s) found in flight before: "
                         f"{checks['state'].value_counts().to_dict()}")  # fmt: skip
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        for table in ("recon.pipeline_backlog", "recon.mes_applied_observed", "recon.in_flight_checks",
                      "recon.investigation_inputs"):  # fmt: skip
            conn.execute(f"DELETE FROM {table} WHERE partition_hour = ?", [start])
        for table, frame in (("recon.pipeline_backlog", backlog), ("recon.mes_applied_observed", applied_now),
                             ("recon.in_flight_checks", checks)):  # fmt: skip
            if len(frame):
                conn.register("incoming", frame)
                conn.execute(f"INSERT INTO {table} SELECT * FROM incoming")
                conn.unregister("incoming")
        conn.execute(
            "INSERT INTO recon.investigation_inputs (partition_hour, observed_at, backlog_rows, applied_rows, "
            "in_flight_window_minutes) VALUES (?, ?, ?, ?, ?)",
            [start, observed_at, len(backlog), len(applied_now), window],
        )
        conn.execute("COMMIT")
