"""Synthetic inputs for bench/reconcile.py: one hour of a plant, written into a fresh DuckDB file.

N material-locations with 10 staged events each (receipts, issues, transfers to another location,
adjustments incl. RECON corrections, a few cycle counts), both systems' begin and end balances
consistent with the events, then a few differences carried over from an earlier hour, ~0.5% of end
balances perturbed and a few events missing in one system, booked under another unit, held in the
pipeline, applied late or still within the in-flight window, so every cause of the investigation
occurs. The hour was reconciled and investigated once before (as the assets store it): when, which
movements the first reconciliation saw (a few ERP documents buffered in the outbox were staged only
after it), what it kept from the pipeline and the MES, and the look it took at movements an earlier
hour found in flight (some arrived, some still missing). Everything is DuckDB SQL and
deterministic: every random choice is hash(row, salt).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from invsync_pipeline.warehouse import open_warehouse

HOUR = datetime(2026, 1, 5, 10, tzinfo=UTC)
EVENTS_PER_KEY = 10
LOCATIONS_PER_MATERIAL = 20  # WH01..WH05 x SL01..SL04
# The hour was first reconciled and investigated a minute after it ended, with this in-flight
# window: a movement missing in one system from the hour's last 29 minutes may still be on its way.
FIRST_RECONCILED_AT = HOUR + timedelta(hours=1, minutes=1)
IN_FLIGHT_WINDOW_MINUTES = 30

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
    # Held for review in an earlier hour: at ~0.3% of the uncounted locations the MES began (and
    # ends) this one short by this much.
    "CREATE TEMP MACRO held_milli(k) AS CASE WHEN rnd(k, 34, 1000) < 3 AND rnd(k, 41, 10) <> 0 "
    "THEN 1 + rnd(k, 35, 50000) ELSE 0 END",
    "CREATE TEMP MACRO at_us(us) AS getvariable('hour') + to_microseconds(us::BIGINT)",
    """CREATE TEMP MACRO reason_of(kind, source) AS CASE kind
           WHEN 'receipt' THEN 'purchase_receipt' WHEN 'issue' THEN 'production_issue'
           WHEN 'transfer' THEN 'stock_transfer' WHEN 'cycle_count' THEN 'cycle_count'
           ELSE CASE WHEN source = 'RECON' THEN 'correction' ELSE 'scrap' END END""",
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
    # bring that system back to it; at ~0.3% of the uncounted locations the MES also begins short
    # by a difference no correction of this hour closes (carried over). End balance: from the last
    # count if there was one, else from the begin; then ~0.5% of them perturbed in one system (the
    # unexplained variances).
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
                  rnd(k, 32, 2) = 0 AS in_erp,
                  held_milli(k) AS held
           FROM range(getvariable('n_keys')) AS r(k)
       )
       SELECT p.kk, p.b - coalesce(r.to_erp, 0) AS erp_begin, p.b - coalesce(r.to_mes, 0) - p.held AS mes_begin,
              coalesce(c.counted, p.b - coalesce(r.to_erp, 0)) + coalesce(e.net, 0)
                  + CASE WHEN p.in_erp THEN p.delta ELSE 0 END AS erp_end,
              coalesce(c.counted, p.b - coalesce(r.to_mes, 0) - p.held) + coalesce(m.net, 0)
                  + CASE WHEN p.in_erp THEN 0 ELSE p.delta END AS mes_end
       FROM perturbed AS p
       LEFT JOIN corrections AS r USING (kk)
       LEFT JOIN g_last_counts AS c USING (kk)
       LEFT JOIN g_net AS e ON e.kk = p.kk AND e.system = 'ERP' AND NOT e.alt
       LEFT JOIN g_net AS m ON m.kk = p.kk AND m.system = 'MES'""",
    """CREATE TEMP TABLE g_missing_mes AS
       SELECT i, row_number() OVER (ORDER BY i) AS n FROM g_events WHERE missing_mes""",
    # The ERP's unpublished documents: the first was quarantined by the drain, every second one was
    # buffered in the ERP outbox through a broker outage when the hour was first reconciled (and
    # staged into the hour only after that), the others were never published.
    """CREATE TEMP TABLE g_erp_docs AS
       SELECT *, row_number() OVER (ORDER BY kk) AS n, n = 1 AS quarantined, n % 2 = 0 AS in_outbox
       FROM g_docs WHERE system = 'ERP'""",
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
    # The outbox's documents, staged after the hour's first reconciliation: its check (and every
    # re-run of it) leaves them out, so they still explain the hour's variances as in the outbox.
    """INSERT INTO staging.inventory_events
       SELECT getvariable('hour'), transaction_id, at_us(t_us), 'ERP', NULL, material_no(kk // 20),
              material_type_of(kk // 20), transaction_type, reason_of(transaction_type, 'ERP'), qty(q),
              unit_of(kk // 20), location_name(kk % 20), NULL, '50' || lpad(kk::VARCHAR, 10, '0'), '101',
              getvariable('first_reconciled_at') + INTERVAL 95 MINUTE,
              getvariable('first_reconciled_at') + INTERVAL 95 MINUTE + to_microseconds(1 + rnd(kk, 27, 4000000)),
              'inventory.wh' || lpad((kk % 20 // 4 + 1)::VARCHAR, 2, '0') || '.' || material_type_of(kk // 20)
                  || '.' || transaction_type,
              'bench-late'
       FROM g_erp_docs WHERE in_outbox""",
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
    # A handful of held messages: three of the MES's missing events, the unpublished ERP documents
    # in the outbox or quarantined, and one quarantined message whose transaction_id could not be read.
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
       FROM g_erp_docs WHERE quarantined
       UNION ALL
       SELECT getvariable('hour'), transaction_id, 'outbox', 'in_flight', material_no(kk // 20),
              location_name(kk % 20), unit_of(kk // 20), qty(q), NULL,
              'buffered in the ERP outbox, not yet confirmed by the broker', getvariable('taken_at')
       FROM g_erp_docs WHERE in_outbox
       UNION ALL
       SELECT getvariable('hour'), NULL, 'quarantine', 'quarantined', NULL, NULL, NULL, NULL, NULL,
              'body is not JSON', getvariable('taken_at')""",
    # What the first investigation of the hour kept from the MES: it applied three more of its
    # missing events after its snapshot (late deliveries).
    """INSERT INTO recon.mes_applied_observed
       SELECT getvariable('hour'), 'TX-' || lpad(i::VARCHAR, 9, '0'), getvariable('hour') + INTERVAL 63 MINUTE
       FROM g_missing_mes WHERE n BETWEEN 4 AND 6""",
    # An earlier hour found movements in flight at the locations the MES began this hour short
    # of; its window has passed, so the first investigation of this hour looked again: one in four
    # of them arrived since, one in four is still in the pipeline, the others are missing. A
    # missing one explains part of the carried difference, or (with one the ERP lacks) all of it.
    """CREATE TEMP TABLE g_in_flight AS
       SELECT k AS kk, held_milli(k) AS held, rnd(k, 36, 4) AS case_no FROM range(getvariable('n_keys')) AS r(k)
       WHERE held_milli(k) > 0""",
    """INSERT INTO recon.in_flight_checks
       SELECT getvariable('hour'), 'TX-PREV-M' || lpad(kk::VARCHAR, 9, '0'), material_no(kk // 20),
              location_name(kk % 20), unit_of(kk // 20), 'MES',
              qty(CASE case_no WHEN 2 THEN (held + 1) // 2 WHEN 3 THEN held + 1 + rnd(kk, 37, 5000)
                  ELSE 1 + rnd(kk, 37, 5000) END),
              getvariable('hour') - to_microseconds(600000000 + rnd(kk, 38, 1800000000)),
              getvariable('hour') - INTERVAL 1 HOUR, 'missing_in_mes',
              (['arrived', 'in_pipeline', 'missing', 'missing'])[1 + case_no], getvariable('taken_at')
       FROM g_in_flight
       UNION ALL
       SELECT getvariable('hour'), 'TX-PREV-E' || lpad(kk::VARCHAR, 9, '0'), material_no(kk // 20),
              location_name(kk % 20), unit_of(kk // 20), 'ERP', qty(1 + rnd(kk, 37, 5000)),
              getvariable('hour') - to_microseconds(600000000 + rnd(kk, 39, 1800000000)),
              getvariable('hour') - INTERVAL 1 HOUR, 'missing_in_erp', 'missing', getvariable('taken_at')
       FROM g_in_flight WHERE case_no = 3""",
    # When the hour was first reconciled: its check covers the movements staged by then.
    "INSERT INTO recon.reconciled_hours VALUES (getvariable('hour'), getvariable('first_reconciled_at'))",
    """INSERT INTO recon.investigation_inputs
       SELECT getvariable('hour'), getvariable('taken_at'), (SELECT count(*) FROM recon.pipeline_backlog),
              (SELECT count(*) FROM recon.mes_applied_observed), getvariable('window_minutes')""",
]


def generate(db: Path, material_locations: int) -> dict:
    with open_warehouse(db) as conn:
        conn.execute("SET threads = 2")
        conn.execute("SET VARIABLE n_keys = $n", {"n": material_locations})
        conn.execute("SET VARIABLE n_events = $n", {"n": material_locations * EVENTS_PER_KEY})
        conn.execute("SET VARIABLE hour = $h::TIMESTAMPTZ", {"h": HOUR})
        conn.execute("SET VARIABLE taken_at = $t::TIMESTAMPTZ", {"t": FIRST_RECONCILED_AT})
        conn.execute("SET VARIABLE first_reconciled_at = $t::TIMESTAMPTZ", {"t": FIRST_RECONCILED_AT})
        conn.execute("SET VARIABLE window_minutes = $w::INTEGER", {"w": IN_FLIGHT_WINDOW_MINUTES})
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
                "recon.in_flight_checks",
            )
        }
        conn.execute("CHECKPOINT")
    return counts
