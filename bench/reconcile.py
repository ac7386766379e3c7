"""Reconciliation throughput: variances.sql + variance_investigation.sql in DuckDB vs the same in pandas.

For each size: N material-locations with 10 staged events each (receipts, issues, transfers to
another location, adjustments incl. RECON corrections, a few cycle counts), both systems' begin
and end balances consistent with the events, then ~0.5% of end balances perturbed and a few
events missing in one system, booked under another unit, held in the pipeline or applied late,
so every cause of the investigation occurs. Inputs are generated with DuckDB SQL into a fresh
DuckDB file (not timed). Then, each in its own process so neither pollutes the other's memory:

- DuckDB: what the assets do for the hour (DELETE + INSERT INTO recon.variances, then
  recon.variance_investigation, with the assets' summary queries), threads = 2, timed;
- pandas: the same inputs read into DataFrames (not timed), the same outputs computed with
  merges and groupbys, by the same steps as the SQL (timed). Both outputs are compared row by
  row; the run fails if they differ.

Each engine runs --repeat times per size (the machine is shared; the fastest run counts). Peak
RSS is that of the engine's own process. A pandas run that takes over PANDAS_LIMIT_S is stopped
and reported in the JSON as "pandas_seconds": null with a note.

    .venv/bin/python bench/reconcile.py [--sizes 10000,100000,1000000] [--repeat 3] [--keep]

Prints a per-size table to stderr and one JSON line last, for the largest size:
{"material_locations", "transactions", "seconds", "pandas_seconds", "speedup", "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from invsync_pipeline.warehouse import open_warehouse, sql

HOUR = datetime(2026, 1, 5, 10, tzinfo=UTC)
EVENTS_PER_KEY = 10
LOCATIONS_PER_MATERIAL = 20  # WH01..WH05 x SL01..SL04
PANDAS_LIMIT_S = 600  # a pandas run is stopped after this and reported as not finished
KEY = ["material_number", "location", "unit"]

# --- input generation (DuckDB SQL, deterministic: every random choice is hash(row, salt)) ---

GENERATE = [
    "CREATE TEMP MACRO rnd(x, salt, n) AS (hash(x, salt) % n)::BIGINT",
    "CREATE TEMP MACRO material_no(m) AS 'MAT-' || lpad(m::VARCHAR, 7, '0')",
    """CREATE TEMP MACRO location_name(l) AS
           'WH' || lpad((l // 4 + 1)::VARCHAR, 2, '0') || '/SL' || lpad((l % 4 + 1)::VARCHAR, 2, '0')""",
    "CREATE TEMP MACRO material_type_of(m) AS (['raw', 'wip', 'finished', 'packaging', 'mro'])[1 + rnd(m, 11, 5)]",
    "CREATE TEMP MACRO unit_of(m) AS (['KG', 'EA', 'L', 'M'])[1 + rnd(m, 12, 4)]",
    "CREATE TEMP MACRO alt_unit(u) AS CASE u WHEN 'KG' THEN 'G' WHEN 'EA' THEN 'PC' WHEN 'L' THEN 'ML' ELSE 'CM' END",
    # Quantities are generated as exact integers in thousandths and stored as DECIMAL(18,6).
    "CREATE TEMP MACRO qty(milli) AS (milli / 1000)::DECIMAL(18, 6)",
    "CREATE TEMP MACRO begin_milli(k) AS 1000000 + rnd(k, 40, 1000000)",
    "CREATE TEMP MACRO at_us(us) AS getvariable('hour') + to_microseconds(us::BIGINT)",
    """CREATE TEMP MACRO reason_of(kind, source) AS CASE kind
           WHEN 'receipt' THEN 'purchase_receipt' WHEN 'issue' THEN 'production_issue'
           WHEN 'transfer' THEN 'stock_transfer' WHEN 'cycle_count' THEN 'cycle_count'
           ELSE CASE WHEN source = 'RECON' THEN 'reconciliation_correction' ELSE 'scrap' END END""",
    # Events: 10 per material-location (k = i // 10), each in its own 6-minute slot of the hour so
    # the order of a location's own events (and its cycle counts) is unambiguous. One location in
    # ten is counted once (one in four of those twice); RECON corrections happen at the others,
    # where they fix a difference the systems began the hour with (see g_balances).
    """CREATE TEMP TABLE g_events AS
       WITH base AS (
           SELECT i, i // 10 AS k, i % 10 AS seq, rnd(i, 1, 1000) AS r_type, rnd(i, 5, 100) AS r_src,
                  (i % 10) * 360000000 + rnd(i, 4, 360000000) AS t_us
           FROM range(getvariable('n_events')) AS r(i)
       ),
       typed AS (
           SELECT *,
                  CASE WHEN rnd(k, 41, 10) = 0
                            AND (seq = rnd(k, 42, 10) OR (rnd(k, 43, 4) = 0 AND seq = rnd(k, 44, 10)))
                       THEN 'cycle_count'
                       WHEN r_type < 300 THEN 'receipt' WHEN r_type < 600 THEN 'issue'
                       WHEN r_type < 800 THEN 'transfer' ELSE 'adjustment' END AS transaction_type,
                  rnd(k, 41, 10) = 0 AS counted_key
           FROM base
       ),
       sourced AS (
           SELECT *,
                  CASE WHEN transaction_type = 'adjustment' AND NOT counted_key AND r_src < 4 THEN 'RECON'
                       WHEN r_src < 67 THEN 'ERP' ELSE 'MES' END AS source_system,
                  CASE WHEN transaction_type = 'adjustment' AND NOT counted_key AND r_src < 2 THEN 'ERP'
                       WHEN transaction_type = 'adjustment' AND NOT counted_key AND r_src < 4 THEN 'MES'
                       END AS target_system
           FROM typed
       ),
       flagged AS (
           SELECT *,
                  coalesce(target_system, 'ERP') = 'ERP' AS belongs_erp,
                  coalesce(target_system, 'MES') = 'MES' AS belongs_mes
           FROM sourced
       )
       SELECT i, k, t_us, transaction_type, source_system, target_system, belongs_erp, belongs_mes,
              CASE WHEN transaction_type = 'transfer'
                   THEN (k // 20) * 20 + (k % 20 + 1 + rnd(i, 3, 19)) % 20 END AS to_k,
              CASE transaction_type
                   WHEN 'adjustment' THEN (CASE WHEN rnd(i, 6, 2) = 0 THEN -1 ELSE 1 END) * (1 + rnd(i, 2, 10000))
                   WHEN 'cycle_count' THEN NULL
                   ELSE 1 + rnd(i, 2, 100000) END AS q_milli,
              -- a few the MES never applied (ERP postings and corrections meant for the MES)
              belongs_mes AND transaction_type <> 'cycle_count' AND source_system <> 'MES'
                  AND rnd(i, 7, 10000) < 2 AS missing_mes,
              -- a few the ERP never booked (MES backflushes and corrections meant for the ERP)
              belongs_erp AND transaction_type <> 'cycle_count' AND source_system <> 'ERP'
                  AND rnd(i, 8, 10000) < 2 AS missing_erp,
              -- a few the ERP booked under another unit than the message carried
              source_system = 'ERP' AND transaction_type IN ('receipt', 'issue', 'adjustment')
                  AND rnd(i, 9, 20000) = 0 AS unit_mismatch
       FROM flagged""",
    # Every change of stock at one location; a transfer also arrives at to_k.
    """CREATE TEMP TABLE g_fx AS
       SELECT i, k AS kk, t_us, transaction_type, source_system, belongs_erp, belongs_mes,
              missing_erp, missing_mes, unit_mismatch, transaction_type = 'cycle_count' AS is_count,
              CASE WHEN transaction_type IN ('issue', 'transfer') THEN -q_milli ELSE q_milli END AS q
       FROM g_events
       UNION ALL
       SELECT i, to_k, t_us, transaction_type, source_system, belongs_erp, belongs_mes,
              missing_erp, missing_mes, unit_mismatch, false, q_milli
       FROM g_events WHERE transaction_type = 'transfer'""",
    # A cycle count finds the physical stock: begin + every real (non-RECON) movement up to it.
    # mes_before is the MES's book balance just before it, for the MES applied log's effect.
    """CREATE TEMP TABLE g_counts AS
       SELECT c.i, c.kk, c.t_us,
              begin_milli(c.kk) + coalesce(sum(f.q) FILTER (WHERE f.source_system <> 'RECON' AND f.t_us <= c.t_us), 0)
                  AS counted,
              begin_milli(c.kk) + coalesce(sum(f.q) FILTER (WHERE f.belongs_mes AND NOT f.missing_mes
                                                             AND f.t_us < c.t_us), 0) AS mes_before
       FROM g_fx AS c
       LEFT JOIN g_fx AS f ON f.kk = c.kk AND NOT f.is_count
       WHERE c.is_count
       GROUP BY c.i, c.kk, c.t_us""",
    """CREATE TEMP TABLE g_last_counts AS
       SELECT kk, arg_max(counted, t_us) AS counted, max(t_us) AS counted_t FROM g_counts GROUP BY kk""",
    # Documents only one system has: ERP postings never published, MES postings never published.
    """CREATE TEMP TABLE g_docs AS
       SELECT 'ERP' AS system, k AS kk, 'ERPDOC-' || lpad(k::VARCHAR, 9, '0') AS transaction_id,
              'receipt' AS transaction_type, rnd(k, 22, 3600000000) AS t_us, 1 + rnd(k, 23, 50000) AS q
       FROM range(getvariable('n_keys')) AS r(k) WHERE rnd(k, 20, 2000) = 0
       UNION ALL
       SELECT 'MES', k, 'MESDOC-' || lpad(k::VARCHAR, 9, '0'), 'adjustment', rnd(k, 24, 3600000000),
              (CASE WHEN rnd(k, 26, 2) = 0 THEN -1 ELSE 1 END) * (1 + rnd(k, 25, 50000))
       FROM range(getvariable('n_keys')) AS r(k) WHERE rnd(k, 21, 2000) = 1""",
    # What each system booked: its share of the events, minus what it missed, plus its own documents.
    # alt: booked by the ERP under the other unit.
    """CREATE TEMP TABLE g_net AS
       WITH own AS (
           SELECT 'ERP' AS system, kk, unit_mismatch AS alt, t_us, q FROM g_fx
           WHERE NOT is_count AND belongs_erp AND NOT missing_erp
           UNION ALL
           SELECT 'MES', kk, false, t_us, q FROM g_fx WHERE NOT is_count AND belongs_mes AND NOT missing_mes
           UNION ALL
           SELECT system, kk, false, t_us, q FROM g_docs
       )
       SELECT o.system, o.kk, o.alt,
              sum(o.q) FILTER (WHERE o.alt OR c.counted_t IS NULL OR o.t_us > c.counted_t) AS net
       FROM own AS o LEFT JOIN g_last_counts AS c USING (kk)
       GROUP BY ALL""",
    # Begin balance per system: the physical stock b, minus the RECON corrections of the hour that
    # bring that system back to it. End balance: from the last count if there was one, else from the
    # begin; then ~0.5% of them perturbed in one system (the unexplained variances).
    """CREATE TEMP TABLE g_balances AS
       WITH corrections AS (
           SELECT kk, sum(q) FILTER (WHERE belongs_erp) AS to_erp, sum(q) FILTER (WHERE belongs_mes) AS to_mes
           FROM g_fx WHERE source_system = 'RECON' GROUP BY kk
       ),
       perturbed AS (
           SELECT k AS kk, begin_milli(k) AS b,
                  CASE WHEN rnd(k, 30, 1000) < 5
                       THEN (CASE WHEN rnd(k, 33, 2) = 0 THEN -1 ELSE 1 END) * (1 + rnd(k, 31, 50000))
                       ELSE 0 END AS delta,
                  rnd(k, 32, 2) = 0 AS in_erp
           FROM range(getvariable('n_keys')) AS r(k)
       )
       SELECT p.kk, p.b - coalesce(r.to_erp, 0) AS erp_begin, p.b - coalesce(r.to_mes, 0) AS mes_begin,
              coalesce(c.counted, p.b - coalesce(r.to_erp, 0)) + coalesce(e.net, 0)
                  + CASE WHEN p.in_erp THEN p.delta ELSE 0 END AS erp_end,
              coalesce(c.counted, p.b - coalesce(r.to_mes, 0)) + coalesce(m.net, 0)
                  + CASE WHEN p.in_erp THEN 0 ELSE p.delta END AS mes_end
       FROM perturbed AS p
       LEFT JOIN corrections AS r USING (kk)
       LEFT JOIN g_last_counts AS c USING (kk)
       LEFT JOIN g_net AS e ON e.kk = p.kk AND e.system = 'ERP' AND NOT e.alt
       LEFT JOIN g_net AS m ON m.kk = p.kk AND m.system = 'MES'""",
    """CREATE TEMP TABLE g_missing_mes AS
       SELECT i, row_number() OVER (ORDER BY i) AS n FROM g_events WHERE missing_mes""",
    # --- the tables the reconciliation reads ---
    """INSERT INTO snapshots.erp_materials
       SELECT material_no(m), material_type_of(m), unit_of(m), ((1 + rnd(m, 14, 50000)) / 100)::DECIMAL(18, 6),
              'EUR', (['A', 'B', 'C'])[1 + rnd(m, 13, 3)], getvariable('taken_at')
       FROM range(getvariable('n_keys') // 20) AS r(m)""",
    """INSERT INTO staging.inventory_events
       SELECT getvariable('hour'), 'TX-' || lpad(e.i::VARCHAR, 9, '0'), at_us(e.t_us), e.source_system,
              e.target_system, material_no(e.k // 20), material_type_of(e.k // 20), e.transaction_type,
              reason_of(e.transaction_type, e.source_system), qty(coalesce(e.q_milli, c.counted)),
              unit_of(e.k // 20), location_name(e.k % 20), location_name(e.to_k % 20),
              '49' || lpad(e.i::VARCHAR, 10, '0'),
              CASE e.transaction_type WHEN 'receipt' THEN '101' WHEN 'issue' THEN '261'
                   WHEN 'transfer' THEN '311' WHEN 'adjustment' THEN '701' END,
              at_us(e.t_us + 500000), at_us(e.t_us + 1000000 + rnd(e.i, 15, 4000000)),
              'inventory.wh' || lpad((e.k % 20 // 4 + 1)::VARCHAR, 2, '0') || '.' || material_type_of(e.k // 20)
                  || '.' || e.transaction_type,
              'bench-' || lpad((e.i // 100000)::VARCHAR, 5, '0')
       FROM g_events AS e LEFT JOIN g_counts AS c USING (i)""",
    """INSERT INTO snapshots.erp_inventory
       SELECT getvariable('hour'), material_no(kk // 20), material_type_of(kk // 20), location_name(kk % 20),
              unit_of(kk // 20), qty(erp_begin), qty(erp_end), getvariable('taken_at'), 'as_of_reconstruction'
       FROM g_balances
       UNION ALL
       SELECT getvariable('hour'), material_no(kk // 20), material_type_of(kk // 20), location_name(kk % 20),
              alt_unit(unit_of(kk // 20)), 0, qty(net), getvariable('taken_at'), 'as_of_reconstruction'
       FROM g_net WHERE alt""",
    """INSERT INTO snapshots.mes_inventory
       SELECT getvariable('hour'), material_no(kk // 20), location_name(kk % 20), unit_of(kk // 20),
              qty(mes_begin), qty(mes_end), getvariable('taken_at'), 'as_of_api'
       FROM g_balances""",
    """INSERT INTO snapshots.erp_movements
       SELECT getvariable('hour'), 'TX-' || lpad(i::VARCHAR, 9, '0'), at_us(t_us), material_no(kk // 20),
              location_name(kk % 20),
              CASE WHEN unit_mismatch THEN alt_unit(unit_of(kk // 20)) ELSE unit_of(kk // 20) END,
              transaction_type, reason_of(transaction_type, source_system), qty(q)
       FROM g_fx WHERE NOT is_count AND belongs_erp AND NOT missing_erp
       UNION ALL
       SELECT getvariable('hour'), transaction_id, at_us(t_us), material_no(kk // 20), location_name(kk % 20),
              unit_of(kk // 20), transaction_type, reason_of(transaction_type, 'ERP'), qty(q)
       FROM g_docs WHERE system = 'ERP'""",
    # The MES logs cycle counts too (effect = counted - book balance), and a few duplicates.
    """INSERT INTO snapshots.mes_applied
       SELECT getvariable('hour'), 'TX-' || lpad(f.i::VARCHAR, 9, '0'), 'MES-' || f.i, 'applied', at_us(f.t_us),
              at_us(f.t_us + 2000000), material_no(f.kk // 20), location_name(f.kk % 20), unit_of(f.kk // 20),
              qty(CASE WHEN f.is_count THEN c.counted - c.mes_before ELSE f.q END)
       FROM g_fx AS f LEFT JOIN g_counts AS c ON f.is_count AND c.i = f.i
       WHERE f.belongs_mes AND NOT f.missing_mes
       UNION ALL
       SELECT getvariable('hour'), 'TX-' || lpad(i::VARCHAR, 9, '0'), NULL, 'duplicate', at_us(t_us),
              at_us(t_us + 9000000), material_no(kk // 20), location_name(kk % 20), unit_of(kk // 20), 0
       FROM g_fx WHERE belongs_mes AND NOT missing_mes AND NOT is_count AND rnd(i, 10, 10000) = 0
       UNION ALL
       SELECT getvariable('hour'), transaction_id, 'MES-' || transaction_id, 'applied', at_us(t_us),
              at_us(t_us + 2000000), material_no(kk // 20), location_name(kk % 20), unit_of(kk // 20), qty(q)
       FROM g_docs WHERE system = 'MES'""",
    # A handful of held messages: three of the MES's missing events, one unpublished ERP document
    # that was quarantined, and one quarantined message whose transaction_id could not be read.
    """INSERT INTO recon.pipeline_backlog
       SELECT getvariable('hour'), 'TX-' || lpad(e.i::VARCHAR, 9, '0'),
              (['plant.wh01.raw', 'retry.1', 'parking'])[g.n], (['pending_sync', 'retrying', 'dead_lettered'])[g.n],
              material_no(e.k // 20), location_name(e.k % 20), unit_of(e.k // 20), NULL,
              location_name(e.to_k % 20), (['waiting for the MES', 'MES answered 503', 'failed three retries'])[g.n],
              getvariable('taken_at')
       FROM g_missing_mes AS g JOIN g_events AS e USING (i) WHERE g.n <= 3
       UNION ALL
       SELECT getvariable('hour'), transaction_id, 'quarantine', 'quarantined', material_no(kk // 20),
              location_name(kk % 20), unit_of(kk // 20), qty(q), NULL, 'quantity: not a decimal',
              getvariable('taken_at')
       FROM (SELECT * FROM g_docs WHERE system = 'ERP' ORDER BY kk LIMIT 1)
       UNION ALL
       SELECT getvariable('hour'), NULL, 'quarantine', 'quarantined', NULL, NULL, NULL, NULL, NULL,
              'body is not JSON', getvariable('taken_at')""",
    # What the first investigation of the hour kept from the MES: it applied three more of its
    # missing events after its snapshot (late deliveries).
    """INSERT INTO recon.mes_applied_observed
       SELECT getvariable('hour'), 'TX-' || lpad(i::VARCHAR, 9, '0'), getvariable('hour') + INTERVAL 63 MINUTE
       FROM g_missing_mes WHERE n BETWEEN 4 AND 6""",
    """INSERT INTO recon.investigation_inputs
       SELECT getvariable('hour'), getvariable('taken_at'), (SELECT count(*) FROM recon.pipeline_backlog),
              (SELECT count(*) FROM recon.mes_applied_observed)""",
]


def generate(db: Path, material_locations: int) -> dict:
    with open_warehouse(db) as conn:
        conn.execute("SET threads = 2")
        conn.execute("SET VARIABLE n_keys = $n", {"n": material_locations})
        conn.execute("SET VARIABLE n_events = $n", {"n": material_locations * EVENTS_PER_KEY})
        conn.execute("SET VARIABLE hour = $h::TIMESTAMPTZ", {"h": HOUR})
        conn.execute("SET VARIABLE taken_at = $t::TIMESTAMPTZ", {"t": HOUR + timedelta(hours=1, minutes=1)})
        for statement in GENERATE:
            conn.execute(statement)
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (
                "staging.inventory_events",
                "snapshots.erp_inventory",
                "snapshots.mes_inventory",
                "snapshots.erp_movements",
                "snapshots.mes_applied",
                "recon.pipeline_backlog",
                "recon.mes_applied_observed",
            )
        }
        conn.execute("CHECKPOINT")
    return counts


# --- the timed DuckDB part: what inventory_variances and variance_investigation do ---


def reconcile_hour(conn) -> None:
    """What inventory_variances and variance_investigation do in the warehouse for the hour. The
    investigation's inputs from the broker and the MES were kept by the hour's first investigation
    (recon.pipeline_backlog, recon.mes_applied_observed), so it only checks they are there."""
    conn.execute("BEGIN TRANSACTION")
    conn.execute("DELETE FROM recon.variances WHERE partition_hour = ?", [HOUR])
    conn.execute(f"INSERT INTO recon.variances {sql('recon/variances')}", {"partition_hour": HOUR})
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
    conn.execute("DELETE FROM recon.variance_investigation WHERE partition_hour = ?", [HOUR])
    conn.execute(
        f"INSERT INTO recon.variance_investigation {sql('recon/variance_investigation')}",
        {"partition_hour": HOUR},
    )
    conn.execute(
        """SELECT cause, system, count(*) AS rows, sum(abs(explained_quantity)) AS quantity,
                  sum(len(transaction_ids)) AS transactions
           FROM recon.variance_investigation WHERE partition_hour = ? GROUP BY ALL ORDER BY rows DESC""",
        [HOUR],
    ).df()
    conn.execute(
        "SELECT observed_at, backlog_rows FROM recon.investigation_inputs WHERE partition_hour = ?", [HOUR]
    ).fetchone()
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
    return {"seconds": min(runs), "runs": runs, "peak_rss_mb": peak_rss_mb, **summarize(variances, investigation)}


# --- the pandas baseline: the same two SQL files, as merges and groupbys ---


def load_inputs(db: Path) -> dict[str, pd.DataFrame]:
    """The hour's input tables as DataFrames, only the columns the reconciliation reads."""
    queries = {
        "events": """SELECT transaction_id, event_time, source_system, target_system, material_number,
                            transaction_type, reason, quantity, unit, location, to_location, received_at
                     FROM staging.inventory_events WHERE partition_hour = $h""",
        "erp": "SELECT material_number, location, unit, begin_quantity, end_quantity "
        "FROM snapshots.erp_inventory WHERE partition_hour = $h",
        "mes": "SELECT material_number, location, unit, begin_quantity, end_quantity "
        "FROM snapshots.mes_inventory WHERE partition_hour = $h",
        "materials": "SELECT material_number, material_type, base_unit, unit_cost, abc_class "
        "FROM snapshots.erp_materials",
        "erp_movements": "SELECT transaction_id, material_number, location, unit, reason, quantity_effect "
        "FROM snapshots.erp_movements WHERE partition_hour = $h",
        "mes_applied": "SELECT transaction_id, status, material_number, location, unit, quantity_effect "
        "FROM snapshots.mes_applied WHERE partition_hour = $h",
        "backlog": "SELECT transaction_id, kind, place, reason FROM recon.pipeline_backlog WHERE partition_hour = $h",
        "applied_now": "SELECT transaction_id, applied_at FROM recon.mes_applied_observed WHERE partition_hour = $h",
        "earlier": "SELECT partition_hour, material_number, location, unit, transaction_ids "
        "FROM recon.variance_investigation WHERE partition_hour < $h AND cause <> 'carried_over'",
    }
    with open_warehouse(db, read_only=True) as conn:
        frames = {
            name: conn.execute(query, {"h": HOUR} if "$h" in query else None).df() for name, query in queries.items()
        }
    return frames


def signed_quantity(events: pd.DataFrame) -> pd.Series:
    outgoing = events["transaction_type"].isin(["issue", "transfer"])
    return events["quantity"].where(~outgoing, -events["quantity"])


def pandas_variances(inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = inp["events"]
    transfers = ev[ev["transaction_type"] == "transfer"]
    cols = ["event_time", "material_number", "location", "unit", "target_system"]
    effects = pd.concat(
        [
            ev[cols].assign(is_count=ev["transaction_type"] == "cycle_count", qty=signed_quantity(ev)),
            transfers[cols].assign(location=transfers["to_location"], is_count=False, qty=transfers["quantity"]),
        ],
        ignore_index=True,
    )
    ledgers = {}
    for system in ("ERP", "MES"):
        p = effects[effects["target_system"].fillna(system) == system]
        moves = p[~p["is_count"]]
        ledger = p.assign(move=p["qty"].where(~p["is_count"], 0.0)).groupby(KEY, sort=False)
        ledger = ledger.agg(net_movement=("move", "sum"), transactions=("qty", "size"))
        # arg_max(qty, event_time): the latest cycle count per material-location
        last = p[p["is_count"]].sort_values("event_time").drop_duplicates(KEY, keep="last")
        last = last[[*KEY, "qty", "event_time"]].rename(columns={"qty": "counted", "event_time": "counted_at"})
        after = moves[[*KEY, "event_time", "qty"]].merge(last, on=KEY)
        after = after[after["event_time"] > after["counted_at"]].groupby(KEY)["qty"].sum().rename("net_after_count")
        ledger = ledger.join(last.set_index(KEY)["counted"]).join(after)
        ledger["net_after_count"] = ledger["net_after_count"].fillna(0.0)
        ledgers[system] = ledger.reset_index()

    erp, mes = inp["erp"], inp["mes"]
    keys = pd.concat([erp[KEY], mes[KEY], ledgers["ERP"][KEY], ledgers["MES"][KEY]]).drop_duplicates()
    b = keys.merge(erp, on=KEY, how="left").merge(mes, on=KEY, how="left", suffixes=("_erp", "_mes"))
    for system in ("ERP", "MES"):
        s = system.lower()
        b = b.merge(
            ledgers[system].add_prefix(f"{s}_").rename(columns={f"{s}_{k}": k for k in KEY}), on=KEY, how="left"
        )
    out = pd.DataFrame({k: b[k] for k in KEY})
    for s in ("erp", "mes"):
        out[f"{s}_begin"] = b[f"begin_quantity_{s}"].fillna(0.0)
        out[f"{s}_end"] = b[f"end_quantity_{s}"].fillna(0.0)
        out[f"{s}_ledger_net"] = b[f"{s}_net_movement"].fillna(0.0)
        out[f"{s}_expected_end"] = np.where(
            b[f"{s}_counted"].notna(),
            b[f"{s}_counted"] + b[f"{s}_net_after_count"],
            out[f"{s}_begin"] + out[f"{s}_ledger_net"],
        )
        out[f"{s}_three_way"] = out[f"{s}_expected_end"] - out[f"{s}_end"]
    out["ledger_transactions"] = b["erp_transactions"].fillna(0) + b["mes_transactions"].fillna(0)
    out["cross_difference"] = out["erp_end"] - out["mes_end"]
    out["abs_difference"] = out["cross_difference"].abs()
    larger = np.maximum(out["erp_end"].abs(), out["mes_end"].abs()).replace(0.0, np.nan)
    out["pct_difference"] = (100 * out["abs_difference"] / larger).round(4)
    out = out.merge(inp["materials"], on="material_number", how="left")
    out["warehouse"] = out["location"].str.split("/").str[0]
    out["value_difference"] = (out["abs_difference"] * out["unit_cost"]).round(2)
    out["is_variance"] = (
        (out["erp_three_way"].abs() > 1e-6) | (out["mes_three_way"].abs() > 1e-6) | (out["abs_difference"] > 1e-6)
    )
    return out


def pandas_investigation(variances: pd.DataFrame, inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = inp["events"]
    var = variances.loc[
        variances["is_variance"], [*KEY, "cross_difference", "erp_three_way", "mes_three_way", "erp_begin", "mes_begin"]
    ]
    moves = ev[ev["transaction_type"] != "cycle_count"]
    transfers = ev[ev["transaction_type"] == "transfer"]
    cols = ["transaction_id", *KEY, "target_system", "source_system", "reason", "received_at"]
    ledger_fx = pd.concat(
        [
            moves[cols].assign(qty=signed_quantity(moves)),
            transfers[cols].assign(location=transfers["to_location"], qty=transfers["quantity"]),
        ],
        ignore_index=True,
    )
    erp_fx = inp["erp_movements"].rename(columns={"quantity_effect": "qty"})
    mes_fx = inp["mes_applied"]
    mes_fx = mes_fx.loc[mes_fx["status"] == "applied", ["transaction_id", *KEY, "quantity_effect"]]
    mes_fx = mes_fx.rename(columns={"quantity_effect": "qty"})
    # As the SQL does: only transactions with a row at a variance's material-location-unit can
    # explain one, and every comparison below is by transaction_id.
    explaining = pd.concat([fx.merge(var[KEY], on=KEY)["transaction_id"] for fx in (ledger_fx, erp_fx, mes_fx)])
    ledger_fx, erp_fx, mes_fx = (fx[fx["transaction_id"].isin(explaining)] for fx in (ledger_fx, erp_fx, mes_fx))
    backlog = inp["backlog"].dropna(subset=["transaction_id"]).groupby("transaction_id", as_index=False).first()

    pairs = erp_fx[["transaction_id", *KEY, "qty"]].merge(
        ledger_fx[["transaction_id", *KEY, "qty"]], on="transaction_id", suffixes=("_erp", "_ledger")
    )
    um = pairs[
        (pairs["material_number_erp"] == pairs["material_number_ledger"])
        & (pairs["location_erp"] == pairs["location_ledger"])
        & (pairs["unit_erp"] != pairs["unit_ledger"])
    ]
    um_text = "the message carried " + um["unit_ledger"] + " where the ERP booked " + um["unit_erp"]
    um_ids = um["transaction_id"]

    def frame(src, unit, system, cause, qty, text) -> pd.DataFrame:
        def values(v):  # positional, so the parts' indexes do not matter
            return v.to_numpy() if isinstance(v, pd.Series) else v

        return pd.DataFrame(
            {"material_number": values(src["material_number"]), "location": values(src["location"]),
             "unit": values(unit), "system": system, "cause": values(cause), "qty": values(qty),
             "transaction_id": values(src["transaction_id"]), "reason_text": values(text)},
            index=pd.RangeIndex(len(src)),
        )  # fmt: skip

    def held_text(x: pd.DataFrame) -> pd.Series:
        return (x["place"] + ": " + x["reason"]).where(x["place"].notna() & x["reason"].notna())

    parts = [
        frame(um.rename(columns={"material_number_erp": "material_number", "location_erp": "location"}),
              um["unit_erp"], "MES", "unit_mismatch", um["qty_erp"], um_text),
        frame(um.rename(columns={"material_number_erp": "material_number", "location_erp": "location"}),
              um["unit_ledger"], "ERP", "unit_mismatch", um["qty_ledger"], um_text),
    ]  # fmt: skip

    unpublished = erp_fx[
        ~erp_fx["transaction_id"].isin(ledger_fx["transaction_id"]) & ~erp_fx["transaction_id"].isin(um_ids)
    ]
    unpublished = unpublished.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    parts.append(
        frame(unpublished, unpublished["unit"], "MES", unpublished["kind"].fillna("not_published"), unpublished["qty"],
              held_text(unpublished.drop(columns="reason").rename(columns={"reason_held": "reason"}))
              .fillna("ERP document with no event on the exchange"))
    )  # fmt: skip

    for_mes = ledger_fx[
        (ledger_fx["target_system"].fillna("MES") == "MES")
        & ~ledger_fx["transaction_id"].isin(mes_fx["transaction_id"])
        & ~ledger_fx["transaction_id"].isin(um_ids)
    ]
    for_mes = for_mes.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    for_mes = for_mes.merge(inp["applied_now"], on="transaction_id", how="left")
    cause = for_mes["kind"].where(
        for_mes["kind"].notna(), np.where(for_mes["applied_at"].notna(), "late_delivery", "missing_in_mes")
    )
    text = held_text(for_mes.drop(columns="reason").rename(columns={"reason_held": "reason"}))
    text = text.fillna(
        "applied by the MES at " + for_mes["applied_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + ", after its snapshot"
    ).fillna("received " + for_mes["received_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + "; not in the MES applied log")
    parts.append(frame(for_mes, for_mes["unit"], "MES", cause, for_mes["qty"], text))

    for_erp = ledger_fx[
        (ledger_fx["target_system"].fillna("ERP") == "ERP")
        & (ledger_fx["source_system"] != "ERP")
        & ~ledger_fx["transaction_id"].isin(erp_fx["transaction_id"])
    ]
    parts.append(frame(for_erp, for_erp["unit"], "ERP", "missing_in_erp", for_erp["qty"],
                       "from " + for_erp["source_system"] + ", " + for_erp["reason"]))  # fmt: skip

    mes_only = mes_fx[
        ~mes_fx["transaction_id"].isin(ledger_fx["transaction_id"])
        & ~mes_fx["transaction_id"].isin(erp_fx["transaction_id"])
    ]
    parts.append(frame(mes_only, mes_only["unit"], "ERP", "not_published", mes_only["qty"],
                       "MES applied it; no event on the exchange"))  # fmt: skip

    explanations = pd.concat(parts, ignore_index=True).merge(var[KEY], on=KEY)
    explained = explanations.groupby([*KEY, "system", "cause"], as_index=False).agg(
        explained_quantity=("qty", "sum"),
        transaction_ids=("transaction_id", lambda s: sorted(set(s))),
        detail=("reason_text", lambda s: "; ".join(s.dropna().unique())),
    )
    # The systems already disagreed when the hour began; named by the latest earlier hour's transactions.
    began_apart = var[var["erp_begin"] != var["mes_begin"]]
    earlier = inp["earlier"].sort_values("partition_hour").drop_duplicates(KEY, keep="last")
    began_apart = began_apart.merge(earlier[[*KEY, "transaction_ids"]], on=KEY, how="left")
    earlier_ids = [list(ids) if isinstance(ids, list | np.ndarray) else [] for ids in began_apart["transaction_ids"]]
    carried = pd.DataFrame(
        {**{k: began_apart[k] for k in KEY}, "system": "MES", "cause": "carried_over",
         "explained_quantity": began_apart["erp_begin"] - began_apart["mes_begin"],
         "transaction_ids": earlier_ids,
         "detail": "the systems already disagreed when the hour began"}
    )  # fmt: skip
    explained = pd.concat([explained, carried], ignore_index=True)
    by_system = (
        explained.assign(
            ERP=explained["explained_quantity"].where(explained["system"] == "ERP", 0.0),
            MES=explained["explained_quantity"].where(explained["system"] == "MES", 0.0),
        )
        .groupby(KEY, as_index=False)[["ERP", "MES"]]
        .sum()
    )
    residuals = var.merge(by_system, on=KEY, how="left").fillna({"ERP": 0.0, "MES": 0.0})
    residuals["residual"] = residuals["cross_difference"] + residuals["ERP"] - residuals["MES"]
    residuals = residuals[residuals["residual"].abs() > 1e-6]
    unexplained = pd.DataFrame(
        {**{k: residuals[k] for k in KEY}, "system": "MES", "cause": "unexplained", "is_timing": False,
         "explained_quantity": residuals["residual"], "transaction_ids": [[] for _ in range(len(residuals))],
         "detail": "three-way ERP " + residuals["erp_three_way"].map(decimal_text)
                   + ", MES " + residuals["mes_three_way"].map(decimal_text)}
    )  # fmt: skip
    explained["is_timing"] = explained["cause"].isin(["pending_sync", "retrying", "late_delivery"])
    return pd.concat([explained, unexplained], ignore_index=True)


def decimal_text(value: float) -> str:
    """A DECIMAL(18,6) as DuckDB casts it to VARCHAR."""
    return f"{round(value, 6) + 0.0:.6f}"


def run_pandas(db: Path, repeat: int) -> dict:
    inputs = load_inputs(db)
    print(json.dumps({"loaded": True}), flush=True)  # the parent's time limit per run starts now
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        variances = pandas_variances(inputs)
        investigation = pandas_investigation(variances, inputs)
        runs.append(time.perf_counter() - started)
        print(json.dumps({"run": runs[-1]}), flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # inputs included, as a pandas job has them
    return {"seconds": min(runs), "runs": runs, "peak_rss_mb": peak_rss_mb, **summarize(variances, investigation)}


# --- comparing both outputs ---


def _q(value) -> float:
    return round(float(value), 6) + 0.0


def summarize(variances: pd.DataFrame, investigation: pd.DataFrame) -> dict:
    """Everything the comparison looks at, in a form that is equal when the outputs are: the
    variance rows with their three numbers, and every investigation row. The order of `detail`'s
    parts is not defined in SQL (string_agg without ORDER BY), so its parts are compared sorted."""
    var = variances[variances["is_variance"]]
    variance_rows = sorted(
        [m, loc, u, _q(a), _q(b), _q(c)]
        for m, loc, u, a, b, c in zip(
            var["material_number"], var["location"], var["unit"], var["erp_three_way"], var["mes_three_way"],
            var["cross_difference"], strict=True,
        )
    )  # fmt: skip
    investigation_rows = sorted(
        [m, loc, u, s, c, bool(t), _q(q), list(ids), sorted(str(d).split("; "))]
        for m, loc, u, s, c, t, q, ids, d in zip(
            investigation["material_number"], investigation["location"], investigation["unit"],
            investigation["system"], investigation["cause"], investigation["is_timing"],
            investigation["explained_quantity"], investigation["transaction_ids"], investigation["detail"], strict=True,
        )
    )  # fmt: skip
    causes: dict[str, int] = {}
    for row in investigation_rows:
        causes[f"{row[4]}/{row[3]}"] = causes.get(f"{row[4]}/{row[3]}", 0) + 1
    return {
        "material_locations": len(variances),
        "variances": len(var),
        "causes": dict(sorted(causes.items())),
        "variance_rows": variance_rows,
        "investigation_rows": investigation_rows,
    }


def assert_same(duck: dict, pan: dict) -> None:
    assert duck["material_locations"] == pan["material_locations"], (
        duck["material_locations"],
        pan["material_locations"],
    )
    assert duck["variances"] == pan["variances"], (
        f"variance rows: DuckDB {duck['variances']}, pandas {pan['variances']}"
    )
    assert duck["causes"] == pan["causes"], f"causes: DuckDB {duck['causes']}, pandas {pan['causes']}"
    for name in ("variance_rows", "investigation_rows"):
        if duck[name] != pan[name]:
            d, p = ({json.dumps(r) for r in rows[name]} for rows in (duck, pan))
            raise AssertionError(f"{name} differ; only DuckDB: {sorted(d - p)[:3]}; only pandas: {sorted(p - d)[:3]}")


# --- orchestration: each part in its own process ---


def child(part: str, db: Path, out: Path, *extra: str, mem_limit_gb: float = 0) -> subprocess.Popen:
    def limit() -> None:
        if mem_limit_gb:  # a MemoryError in the child instead of the kernel's OOM killer on a shared machine
            cap = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--part", part, "--db", str(db), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=limit)


def run_child(part: str, db: Path, out: Path, *extra: str) -> dict:
    proc = child(part, db, out, *extra)
    proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {part} step failed with exit code {proc.returncode} (its error is above)")
    return json.loads(out.read_text())


def run_pandas_child(db: Path, out: Path, repeat: int, mem_limit_gb: float) -> tuple[dict | None, str | None]:
    """pandas in its own process; each of its runs may take PANDAS_LIMIT_S, loading is not limited."""
    proc = child("pandas", db, out, "--repeat", str(repeat), mem_limit_gb=mem_limit_gb)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    if lines.get() is None:
        proc.wait()
        return None, f"pandas failed while loading the inputs (exit code {proc.returncode})"
    for _ in range(repeat):
        try:
            line = lines.get(timeout=PANDAS_LIMIT_S)
        except queue.Empty:
            proc.kill()
            proc.wait()
            return None, f"pandas did not finish within {PANDAS_LIMIT_S} s and was stopped"
        if line is None:
            proc.wait()
            cap = f"a MemoryError means it hit the {mem_limit_gb:g} GiB cap (--pandas-mem-gb)"
            return None, f"pandas failed with exit code {proc.returncode}; {cap}"
    proc.wait()
    if proc.returncode != 0:
        return None, f"pandas failed after its runs with exit code {proc.returncode}"
    return json.loads(out.read_text()), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="material-locations per run, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the DuckDB files (their folder is printed)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine and size; the fastest counts")
    parser.add_argument("--pandas-mem-gb", type=float, default=21.0, help="address-space cap of the pandas process")
    parser.add_argument("--part", choices=["generate", "duckdb", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--material-locations", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:
        work = {"generate": lambda: generate(args.db, args.material_locations),
                "duckdb": lambda: run_duckdb(args.db, args.repeat),
                "pandas": lambda: run_pandas(args.db, args.repeat)}[args.part]  # fmt: skip
        started = time.perf_counter()
        result = work()
        if args.part == "generate":
            result = {"tables": result, "seconds": time.perf_counter() - started}
        args.out.write_text(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        if n <= 0 or n % LOCATIONS_PER_MATERIAL:
            parser.error(
                f"--sizes: {n} is not a positive multiple of {LOCATIONS_PER_MATERIAL} (locations per material)"
            )
    home = Path(tempfile.mkdtemp(prefix="invsync-bench-reconcile-"))
    rows = []
    try:
        for n in sizes:
            db = home / f"recon_{n}.duckdb"
            gen = run_child("generate", db, home / f"gen_{n}.json", "--material-locations", str(n))
            duck = run_child("duckdb", db, home / f"duckdb_{n}.json", "--repeat", str(args.repeat))
            pan, note = run_pandas_child(db, home / f"pandas_{n}.json", args.repeat, args.pandas_mem_gb)
            if pan is not None:
                assert_same(duck, pan)
            row = {
                "material_locations": n,
                "transactions": n * EVENTS_PER_KEY,
                "generate_seconds": gen["seconds"],
                "seconds": duck["seconds"],
                "pandas_seconds": pan["seconds"] if pan else None,
                "speedup": pan["seconds"] / duck["seconds"] if pan else None,
                "peak_rss_mb": duck["peak_rss_mb"],
                "pandas_peak_rss_mb": pan["peak_rss_mb"] if pan else None,
                "variances": duck["variances"],
                "runs": (duck["runs"], pan["runs"] if pan else []),
                "causes": duck["causes"],
                "note": note,
            }
            rows.append(row)
            print_row(row, first=len(rows) == 1)
            if not args.keep:
                db.unlink()
    finally:
        if args.keep:
            print(f"kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    largest = rows[-1]
    both = [r for r in rows if r["pandas_seconds"] is not None]
    for r in rows:
        runs = "; ".join(" ".join(f"{t:.2f}" for t in ts) or "-" for ts in r["runs"])
        print(f"{r['material_locations']:>9,}: runs (duckdb; pandas) {runs} s; {r['variances']:,} variances; "
              f"investigation rows by cause {r['causes']}", file=sys.stderr)  # fmt: skip
    result = {
        "material_locations": largest["material_locations"],
        "transactions": largest["transactions"],
        "seconds": round(largest["seconds"], 2),
        "pandas_seconds": round(largest["pandas_seconds"], 2) if largest["pandas_seconds"] is not None else None,
        "speedup": round(largest["speedup"], 1) if largest["speedup"] is not None else None,
        "peak_rss_mb": round(largest["peak_rss_mb"]),
    }
    if largest["note"]:
        result["note"] = largest["note"]
        if both:
            b = both[-1]
            result["largest_size_both_ran"] = {"material_locations": b["material_locations"],
                                               "seconds": round(b["seconds"], 2),
                                               "pandas_seconds": round(b["pandas_seconds"], 2),
                                               "speedup": round(b["speedup"], 1)}  # fmt: skip
    print(json.dumps(result))


def print_row(row: dict, first: bool) -> None:
    """One line of the per-size table; seconds per million events show whether growth is linear."""

    def fmt(value, spec: str) -> str:
        return "-".rjust(len(format(0.0, spec))) if value is None else format(value, spec)

    per_million = 1e6 / row["transactions"]
    pandas_s = row["pandas_seconds"]
    cells = [
        f"{row['material_locations']:>9,}",
        f"{row['transactions']:>10,}",
        f"{row['generate_seconds']:>7.1f}",
        f"{row['seconds']:>9.2f}",
        fmt(pandas_s, ">9.2f"),
        fmt(row["speedup"], ">7.1f") + ("x" if row["speedup"] is not None else " "),
        f"{row['peak_rss_mb']:>10,.0f}",
        fmt(row["pandas_peak_rss_mb"], ">10,.0f"),
        f"{row['seconds'] * per_million:>9.2f}",
        fmt(pandas_s * per_million if pandas_s is not None else None, ">9.2f"),
    ]
    if first:
        head = ["mat-locs", "events", "gen s", "duckdb s", "pandas s", "speedup", "duckdb MB", "pandas MB",
                "duckdb/1M", "pandas/1M"]  # fmt: skip
        print(" ".join(f"{h:>{len(c)}}" for h, c in zip(head, cells, strict=True)), file=sys.stderr)
    note = f"  ({row['note']})" if row["note"] else ""
    print(" ".join(cells) + note, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
