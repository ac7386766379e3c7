"""cutover_comparison: each day, the batch sync's result vs the event-driven result vs the ERP.

Read straight from the systems at the end of the day (stock as of midnight UTC, the day's ERP
documents and the event-driven MES's applied log), stored the first time and reused after
that, so a backfill of the whole shadow period compares what was true then. One run can
backfill many days (a single-run backfill policy): the days are compared in order, so each
sees the day before it.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd

from invsync_pipeline.assets.hours import SINGLE_RUN
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.contract import instant_of
from invsync_pipeline.cutover.routing import mode_at
from invsync_pipeline.cutover.scope import scope_label, scope_on
from invsync_pipeline.partitions import daily_partitions
from invsync_pipeline.plant_scope import ASSET_KEY_PREFIX
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.balances import Key, erp_stock, mes_balances
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL, sql


class ComparisonConfig(dg.Config):
    refresh: bool = False  # read the systems again even if the day was stored before


def day_bounds(partition_key: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(partition_key).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


def _stock_rows(day: date, system: str, rows: dict[Key, object], types: dict[str, str], taken_at, source: str):
    return [(day, system, m, loc, unit, types.get(m), float(q), taken_at, source) for (m, loc, unit), q in rows.items()]


def read_day_end(
    settings: Settings, day: date, erp_resource: ErpResource, mes: MesResource
) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(day_end_stock rows, day_movements rows, has_batch) read from the ERP and the MES(es)."""
    start = datetime.combine(day, datetime.min.time(), UTC)
    end = start + timedelta(days=1)
    taken_at = datetime.now(UTC)
    erp = erp_resource.open()
    try:
        erp_now, types = erp_stock(erp, end)
        erp_moves = erp.movements(start, end)
    finally:
        erp.dispose()
    stock = _stock_rows(day, "erp", erp_now, types, taken_at, f"erp:{settings.erp_url.split(':', 1)[0]}")
    moves = [(day, "erp", e.transaction_id, e.timestamp, e.material_number, loc, e.unit)
             for e in erp_moves for loc, _ in e.stock_effects()]  # fmt: skip
    mode = mode_at(settings, min(end, taken_at))
    event_client = mes.open(mode)
    try:
        held = mes_balances(event_client, end)
        stock += _stock_rows(day, "event_driven", held, types, taken_at, _source(event_client))
        for row in event_client.applied_transactions(since=start):
            ts = instant_of(row["timestamp"])
            if row["status"] == "applied" and start <= ts < end:
                moves += [(day, "event_driven", row["transaction_id"], ts, mv["material_number"], mv["location"],
                           mv["unit"]) for mv in row.get("movements", [])]  # fmt: skip
    finally:
        event_client.close()
    has_batch = mode == "shadow"
    if has_batch:
        live = mes.open("live")
        try:
            stock += _stock_rows(day, "batch", mes_balances(live, end), types, taken_at, _source(live))
        finally:
            live.close()
    stock_frame = pd.DataFrame(stock, columns=["day", "system", "material_number", "location", "unit", "material_type",
                                               "quantity", "taken_at", "source"])  # fmt: skip
    moves_frame = pd.DataFrame(moves, columns=["day", "system", "transaction_id", "event_time", "material_number",
                                               "location", "unit"])  # fmt: skip
    return stock_frame, moves_frame, has_batch


def _source(mes) -> str:
    return getattr(mes, "base_url", type(mes).__name__)


def _insert(conn, table: str, frame: pd.DataFrame) -> None:
    if len(frame):
        conn.register("incoming", frame)
        conn.execute(f"INSERT INTO {table} ({', '.join(frame.columns)}) SELECT * FROM incoming")
        conn.unregister("incoming")


def compare_day(
    conn, settings: Settings, day: date, refresh: bool, erp: ErpResource, mes: MesResource
) -> dict[str, object]:
    """Compare one day inside an open transaction; returns the day's figures."""
    stored = conn.execute("SELECT count(*), count(*) FILTER (WHERE system = 'batch') FROM cutover.day_end_stock "
                          "WHERE day = ?", [day]).fetchone()  # fmt: skip
    if refresh or not stored[0]:
        stock, moves, has_batch = read_day_end(settings, day, erp, mes)
        for table in ("cutover.day_end_stock", "cutover.day_movements"):
            conn.execute(f"DELETE FROM {table} WHERE day = ?", [day])
        _insert(conn, "cutover.day_end_stock", stock)
        _insert(conn, "cutover.day_movements", moves)
    else:
        has_batch = stored[1] > 0
    scope = scope_on(settings, day)
    every = settings.cutover.batch_sync_every_hours
    day_end = datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1)
    # Runs at 00:00, N:00, ...; the day-end stock (strictly before midnight) includes the one before it.
    last_batch_run = day_end - timedelta(hours=every)
    params = {
        "day": day,
        "scope": list(scope),
        "scope_label": scope_label(scope),
        "tolerance": settings.cutover.tolerance,
        "last_batch_run": last_batch_run,
        "has_batch": has_batch,
    }
    for table in ("cutover.comparison", "cutover.daily_accuracy"):
        conn.execute(f"DELETE FROM {table} WHERE day = ?", [day])
    conn.execute(f"INSERT INTO cutover.comparison {sql('cutover/comparison')}", params)
    conn.execute(f"INSERT INTO cutover.daily_accuracy {sql('cutover/daily_accuracy')}", {"day": day})
    figures = conn.execute(
        "SELECT slice, material_locations, event_accuracy, batch_accuracy FROM cutover.daily_accuracy WHERE day = ?",
        [day],
    ).fetchall()
    by_slice = {s: (n, ev, b) for s, n, ev, b in figures}
    in_scope = by_slice.get("in_scope", (0, None, None))
    return {"day": day.isoformat(), "scope": scope_label(scope), "material_locations": in_scope[0],
            "accuracy": in_scope[1], "batch_accuracy": in_scope[2]}  # fmt: skip


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="cutover",
    kinds={"duckdb", "sqlalchemy", "api"},
    pool=DUCKDB_WRITER_POOL,
    key_prefix=ASSET_KEY_PREFIX,
    metadata={"dagster/table_name": "cutover.comparison"},
)
def cutover_comparison(
    context: dg.AssetExecutionContext,
    config: ComparisonConfig,
    invsync: InvsyncResource,
    erp: ErpResource,
    mes: MesResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """The cutover's daily accuracy: per material-location at midnight UTC, the old batch sync's
    result (the live MES) vs the event-driven result (the shadow MES, or the live one after
    go-live) vs the ERP.

    Accuracy is the share of material-locations in pilot scope where the event-driven result
    agrees with the ERP within `cutover.tolerance`; the batch sync's share is beside it. Each
    disagreement has its cause (`not_applied`, `not_in_erp`, `unit_mismatch`, `carried_over`,
    `out_of_scope`, `batch_lag`, `unexplained`) and its transactions. The `go_live_readiness`
    check turns the trend into the go/no-go."""
    settings = invsync.settings()
    days = [date.fromisoformat(key) for key in context.partition_keys]
    results = []
    with warehouse.connect() as conn:
        for day in days:
            conn.execute("BEGIN TRANSACTION")
            results.append(compare_day(conn, settings, day, config.refresh, erp, mes))
            conn.execute("COMMIT")
            context.log.info("cutover %s: %s", day, results[-1])
        causes = conn.execute(
            "SELECT event_cause AS cause, count(*) AS material_locations FROM cutover.comparison "
            "WHERE day BETWEEN ? AND ? AND in_scope AND NOT event_agrees GROUP BY ALL ORDER BY 2 DESC",
            [days[0], days[-1]],
        ).df()
    trend = pd.DataFrame(results)
    last = results[-1]
    metadata = {
        "days": len(days),
        "scope": last["scope"],
        "material_locations": last["material_locations"],
        "daily_trend": dg.MetadataValue.md(md_table(trend, limit=62)),
        "disagreements_by_cause": dg.MetadataValue.md(md_table(causes)),
    }
    # Numbers only where they are a day's own: the Plots tab charts them across daily partitions.
    if len(days) == 1 and last["accuracy"] is not None:
        metadata["accuracy_pct"] = round(100 * last["accuracy"], 3)
        if last["batch_accuracy"] is not None:
            metadata["batch_accuracy_pct"] = round(100 * last["batch_accuracy"], 3)
    return dg.MaterializeResult(metadata=metadata)
