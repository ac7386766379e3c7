"""The demo end to end, and a 24-hour backfill that must equal the live runs."""

from __future__ import annotations

import pytest

from invsync_pipeline.reference.demo import run_demo
from invsync_pipeline.warehouse import open_warehouse

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# What a re-run must reproduce exactly; columns that record when a run happened are left out.
COMPARED = {
    "staging.inventory_events": "*",
    "ledger.transaction_ledger": "*",
    "snapshots.erp_inventory": "*",
    "snapshots.mes_inventory": "*",
    "recon.variances": "*",
    "recon.variance_investigation": "*",
    "recon.corrections": "* EXCLUDE (decided_at)",
    "recon.correction_audit_log": "* EXCLUDE (logged_at)",
    "recon.variance_report": "*",
}


def _tables(settings) -> dict[str, list[tuple]]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return {t: conn.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall() for t, cols in COMPARED.items()}


def test_the_demo_detects_every_injected_fault_with_its_cause_and_no_false_positives(settings, topology):
    result = run_demo(hours=2, seed=11, log=lambda _: None)

    score = result.score
    assert score["injected"] > 0
    assert score["detected"] == score["injected"]
    assert score["misclassified"] == 0
    assert score["false_positives"] == 0
    assert score["corrected"] + score["held_for_review"] > 0
    assert result.report_html is not None and result.report_html.exists()


def test_a_backfill_of_24_past_hours_equals_the_live_runs(settings, topology):
    import dagster as dg

    from invsync_pipeline.definitions import defs

    live = run_demo(hours=24, seed=3, log=lambda _: None)  # hour by hour, as the schedule would
    assert live.score["detected"] == live.score["injected"] and live.score["false_positives"] == 0
    before = _tables(settings)
    assert len(before["recon.variances"]) > 0 and len(before["recon.variance_investigation"]) > 0

    # The backfill: every hour again, newest first, with the MES and the worker gone.
    job = defs.resolve_job_def("hourly_reconciliation")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    instance = dg.DagsterInstance.ephemeral()
    for key in reversed(live.hours):
        assert job.execute_in_process(partition_key=key, instance=instance, run_config=quiet).success

    after = _tables(settings)
    for table in COMPARED:
        assert after[table] == before[table], table
