"""The demo end to end, and a 12-hour backfill that must equal the live runs."""

from __future__ import annotations

import pytest

from invsync_pipeline.reference.demo import run_demo
from invsync_pipeline.warehouse import open_warehouse

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# What a re-run must reproduce exactly; columns that record when a run happened are left out, and
# so is the status a correction has now in the report (a held one may resolve or be decided later).
COMPARED = {
    "staging.inventory_events": "*",
    "ledger.transaction_ledger": "*",
    "snapshots.erp_inventory": "*",
    "snapshots.mes_inventory": "*",
    "recon.variances": "*",
    "recon.variance_investigation": "*",
    "recon.corrections": "* EXCLUDE (decided_at)",
    "recon.correction_audit_log": "* EXCLUDE (logged_at)",
    "recon.variance_report": "* EXCLUDE (correction_status)",
}


# The keys the README's metrics view tells an operator to pick in Assets > flow_metrics > Plots.
PLOTTED = (
    "published_per_s", "applied_per_s", "staged_per_s",
    "lag_p50_ms", "lag_p95_ms", "lag_p99_ms",
    "retries", "dead_letters",
    "queue_depth_max_work", "queue_depth_last_work", "queue_depth_max_tap", "queue_depth_last_tap",
    "queue_depth_max_retry", "queue_depth_last_retry", "queue_depth_max_parking", "queue_depth_last_parking",
)  # fmt: skip


def _tables(settings) -> dict[str, list[tuple]]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return {t: conn.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall() for t, cols in COMPARED.items()}


def _exports(settings) -> dict[str, list[tuple]]:
    """The analyst exports of the compared tables, read back as an analyst would."""
    import duckdb

    from invsync_pipeline.assets.exports import EXPORTED_TABLES

    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return {
            t: conn.execute(
                f"SELECT {cols} FROM (SELECT * EXCLUDE (hour) FROM read_parquet("
                f"'{settings.home}/exports/{t}/*/*.parquet', hive_partitioning = true)) ORDER BY ALL"
            ).fetchall()
            for t, cols in COMPARED.items()
            if t in EXPORTED_TABLES
        }


def _analyst_db(settings) -> dict[str, list[tuple]]:
    """The same tables through analyst.duckdb's views, opened as an analyst would."""
    import duckdb

    from invsync_pipeline.assets.exports import EXPORTED_TABLES

    with duckdb.connect(str(settings.home / "analyst.duckdb"), read_only=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return {t: conn.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
                for t, cols in COMPARED.items() if t in EXPORTED_TABLES}  # fmt: skip


def test_the_demo_detects_every_injected_fault_with_its_cause_and_leaves_plottable_flow_metrics(
    settings, topology, tmp_path, monkeypatch
):
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # as `make demo` does, not ephemeral
    result = run_demo(hours=2, seed=11, log=lambda _: None)

    score = result.score
    assert score["injected"] > 0
    assert score["detected"] == score["injected"]
    assert score["misclassified"] == 0
    assert score["false_positives"] == 0
    assert score["corrected"] + score["held_for_review"] > 0
    assert result.report_html is not None and result.report_html.exists()

    # The metrics view of the README: flow_metrics for every demo hour on the instance, ready to plot.
    records = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey("flow_metrics"), limit=100).records
    by_hour = {r.asset_materialization.partition: r.asset_materialization.metadata for r in records}
    assert sorted(by_hour) == sorted(result.hours)
    for hour, metadata in by_hour.items():
        missing = [key for key in PLOTTED if key not in metadata]
        assert not missing, f"{hour}: {missing}"
        # The Plots tab charts int and float metadata only.
        assert all(isinstance(metadata[key], dg.IntMetadataValue | dg.FloatMetadataValue) for key in PLOTTED)
        assert metadata["queue_depth"].value  # the per-queue table ("_none_" without samples)
        # The demo's movements flowed: staged, published, applied to the MES with a measured lag.
        assert metadata["staged_events"].value > 0
        assert metadata["published_events"].value == metadata["staged_events"].value
        assert metadata["applied_events"].value > 0 and metadata["lag_samples"].value > 0
        assert metadata["lag_p50_ms"].value <= metadata["lag_p95_ms"].value <= metadata["lag_p99_ms"].value


def test_a_backfill_of_12_past_hours_equals_the_live_runs(settings, topology, monkeypatch):
    import dagster as dg

    from invsync_pipeline.definitions import defs

    live = run_demo(hours=12, seed=3, log=lambda _: None)  # hour by hour, as the schedule would
    assert live.score["detected"] == live.score["injected"] and live.score["false_positives"] == 0
    before = _tables(settings)
    exported = _exports(settings)
    assert exported == {t: rows for t, rows in before.items() if t in exported}
    assert _analyst_db(settings) == exported
    assert len(before["recon.variances"]) > 0 and len(before["recon.variance_investigation"]) > 0

    # The backfill, with the MES and the worker gone: the newest hour alone, then all 12 hours in
    # one run, as the UI's backfill does with the single-run backfill policy.
    job = defs.resolve_job_def("hourly_reconciliation")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    instance = dg.DagsterInstance.ephemeral()
    assert job.execute_in_process(partition_key=live.hours[-1], instance=instance, run_config=quiet).success
    # Chunks of 5 hours (24 in production), so the range crosses chunk boundaries as 3 weeks do.
    monkeypatch.setattr("invsync_pipeline.assets.hours.CHUNK_HOURS", 5)
    whole = {"dagster/asset_partition_range_start": live.hours[0], "dagster/asset_partition_range_end": live.hours[-1]}
    assert job.execute_in_process(instance=instance, tags=whole, run_config=quiet).success

    after = _tables(settings)
    for table in COMPARED:
        assert after[table] == before[table], table
    assert _exports(settings) == exported
