"""go_live_readiness: the cutover's gate, with the daily trend as metadata and a chart."""

import dagster as dg

from invsync_pipeline.assets.cutover import cutover_comparison
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.cutover.readiness import readiness, trend_svg
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL


@dg.asset_check(asset=cutover_comparison, blocking=False, pool=DUCKDB_WRITER_POOL)
def go_live_readiness(
    context: dg.AssetCheckExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Passes when the event-driven path agreed with the ERP on at least `cutover.gate.min_accuracy`
    (99.5%) of the material-locations in pilot scope for `cutover.gate.consecutive_days` days in a
    row, ending with the latest compared day. `invsync cutover go-live` asks the same question."""
    settings = invsync.settings()
    with warehouse.connect() as conn:
        result = readiness(conn, settings)
    chart = settings.home / "reports" / "cutover_readiness.svg"
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(trend_svg(result))
    trend = result.trend.assign(
        accuracy=(100 * result.trend["accuracy"]).round(3),
        batch_accuracy=(100 * result.trend["batch_accuracy"]).round(3),
    )
    last = result.latest
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=result.summary(),
        metadata={
            "consecutive_days_at_gate": result.streak,
            "consecutive_days_needed": result.needed,
            "min_accuracy_pct": 100 * result.min_accuracy,
            "latest_accuracy_pct": round(100 * float(last["accuracy"] or 0), 3) if last is not None else 0.0,
            "daily_trend": dg.MetadataValue.md(md_table(trend.iloc[::-1], limit=62)),
            "trend_chart": dg.MetadataValue.path(str(chart)),
        },
    )
