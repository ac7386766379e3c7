"""The timed DuckDB side of bench/reconcile.py: what the inventory_variances and
variance_investigation assets do in the warehouse for the hour (recon/variances.sql, then
recon/explained_movements.sql and recon/variance_investigation.sql)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from _reconcile_compare import summarize
from _reconcile_data import HOUR

from invsync_pipeline.warehouse import open_warehouse, sql


def reconcile_hour(conn) -> None:
    """What inventory_variances and variance_investigation do in the warehouse for the hour
    (invsync_pipeline/assets/variances.py). The hour's first reconciliation and investigation
    already happened: which movements its check covers (recon.reconciled_hours) and what it kept
    from the pipeline, the MES and the look at movements earlier hours found in flight
    (recon.pipeline_backlog, recon.mes_applied_observed, recon.in_flight_checks,
    recon.investigation_inputs) were stored by the generation, so this is the re-run the assets do
    for an hour they reconciled before. The assets' own statements run all the same."""
    conn.execute("BEGIN TRANSACTION")
    conn.execute(
        """INSERT INTO recon.reconciled_hours
           SELECT hour, now() FROM unnest(CAST(? AS TIMESTAMPTZ[])) AS t(hour)
           WHERE hour NOT IN (SELECT partition_hour FROM recon.reconciled_hours)""",
        [[HOUR]],
    )
    conn.execute("DELETE FROM recon.variances WHERE partition_hour = ?", [HOUR])
    conn.execute(f"INSERT INTO recon.variances {sql('recon/variances')}", {"first_hour": HOUR, "last_hour": HOUR})
    conn.execute(
        """SELECT count(*), count(*) FILTER (WHERE is_variance), coalesce(sum(value_difference), 0)
           FROM recon.variances WHERE partition_hour = ?""",
        [HOUR],
    ).fetchone()
    conn.execute(
        """SELECT material_number, location, unit, erp_end, mes_end, cross_difference, erp_three_way,
                  mes_three_way, pct_difference
           FROM recon.variances WHERE partition_hour = ? AND is_variance
           ORDER BY abs_difference DESC LIMIT 15""",
        [HOUR],
    ).df()
    conn.execute("COMMIT")
    observed = conn.execute("SELECT observed_at FROM recon.investigation_inputs WHERE partition_hour = ?", [HOUR])
    assert observed.fetchone() is not None, "generation did not store the investigation's inputs"
    conn.execute("BEGIN TRANSACTION")
    conn.execute("DELETE FROM recon.explained_movements WHERE partition_hour = ?", [HOUR])
    conn.execute(f"INSERT INTO recon.explained_movements {sql('recon/explained_movements')}",
                 {"first_hour": HOUR, "last_hour": HOUR})  # fmt: skip
    conn.execute("DELETE FROM recon.variance_investigation WHERE partition_hour = ?", [HOUR])
    conn.execute(f"INSERT INTO recon.variance_investigation {sql('recon/variance_investigation')}",
                 {"partition_hour": HOUR})  # fmt: skip
    conn.execute(
        """SELECT cause, system, count(*) AS rows, sum(abs(explained_quantity)) AS quantity,
                  sum(len(transaction_ids)) AS transactions
           FROM recon.variance_investigation WHERE partition_hour = ? GROUP BY ALL ORDER BY rows DESC""",
        [HOUR],
    ).df()
    conn.execute(
        "SELECT observed_at, backlog_rows FROM recon.investigation_inputs WHERE partition_hour = ?", [HOUR]
    ).fetchone()
    conn.execute(
        "SELECT state, count(*) FROM recon.in_flight_checks WHERE partition_hour = ? GROUP BY ALL", [HOUR]
    ).fetchall()
    conn.execute("COMMIT")


def run_duckdb(db: Path, repeat: int) -> dict:
    """The hour reconciled `repeat` times in one connection (the first run finds the tables empty,
    the others replace the hour's rows, as a re-run of the assets does)."""
    with open_warehouse(db) as conn:
        conn.execute("SET threads = 2")
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            reconcile_hour(conn)
            runs.append(time.perf_counter() - started)
        # Peak RSS of this process, which did nothing but open the file and run the above.
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        variances = conn.execute("SELECT * FROM recon.variances WHERE partition_hour = ?", [HOUR]).df()
        investigation = conn.execute("SELECT * FROM recon.variance_investigation WHERE partition_hour = ?", [HOUR]).df()
        movements = conn.execute("SELECT * FROM recon.explained_movements WHERE partition_hour = ?", [HOUR]).df()
    summary = summarize(variances, investigation, movements)
    return {"seconds": min(runs), "runs": runs, "peak_rss_mb": peak_rss_mb, **summary}
