"""The DuckDB side of bench/_backfill_data.py: the macros and per-hour SQL scripts that turn a
plant's hour into its events (hash()-based choices, so the same arguments give the same data), both
systems' books, the snapshot and recon rows the hour's first reconciliation stored, and the text of
the staged log's segments; `_run` to execute a script, and the inserts of what Python decided (the
corrections and their audit log) and of each hour's investigation inputs."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

import duckdb
import pandas as pd

MACROS = [
    # Quantities are exact integers in thousandths of a unit (milli) until they are written.
    "CREATE OR REPLACE TEMP MACRO dq(milli) AS (milli::DECIMAL(18, 0) * 0.001)::DECIMAL(18, 6)",
    # The canonical decimal string of the contract: "12.5", "3", "-0.25".
    "CREATE OR REPLACE TEMP MACRO qtext(milli) AS rtrim(rtrim((milli::DECIMAL(18, 0) * 0.001)::VARCHAR, '0'), '.')",
    "CREATE OR REPLACE TEMP MACRO eff(kind, q) AS CASE WHEN kind IN ('issue', 'transfer') THEN -q ELSE q END",
    # RFC 3339 as Python's isoformat() writes it: fractions only when there are any.
    """CREATE OR REPLACE TEMP MACRO iso(us) AS CASE WHEN us % 1000000 = 0
           THEN strftime(make_timestamptz(us), '%Y-%m-%dT%H:%M:%SZ')
           ELSE strftime(make_timestamptz(us), '%Y-%m-%dT%H:%M:%S.%fZ') END""",
    """CREATE OR REPLACE TEMP MACRO tx_id(source, number, year) AS CASE WHEN source = 'MES'
           THEN 'MES-BF-' || lpad(number::VARCHAR, 10, '0') ELSE 'ERP-' || year || '-' || (4900000000 + number) END""",
    """CREATE OR REPLACE TEMP MACRO movement_type_of(reason, q) AS CASE reason
           WHEN 'purchase_receipt' THEN '101' WHEN 'production_receipt' THEN '101' WHEN 'stock_transfer' THEN '311'
           WHEN 'shipment' THEN '601' WHEN 'production_consumption' THEN '261' WHEN 'scrap' THEN '551'
           WHEN 'return' THEN '262' WHEN 'correction' THEN CASE WHEN q > 0 THEN '701' ELSE '702' END END""",
    # The business document behind a movement: purchase order, production order, delivery, ...
    """CREATE OR REPLACE TEMP MACRO erp_reference_of(reason, r) AS CASE reason
           WHEN 'purchase_receipt' THEN '45' || lpad((r % 100000000)::VARCHAR, 8, '0')
           WHEN 'shipment' THEN '80' || lpad((r % 1000000)::VARCHAR, 6, '0')
           WHEN 'stock_transfer' THEN 'TO' || lpad((r % 10000000)::VARCHAR, 7, '0')
           WHEN 'physical_inventory' THEN '1' || lpad((r % 1000000000)::VARCHAR, 9, '0')
           WHEN 'scrap' THEN '49' || lpad((r % 100000000)::VARCHAR, 8, '0')
           WHEN 'correction' THEN '49' || lpad((r % 100000000)::VARCHAR, 8, '0')
           ELSE (1000000 + r % 9000000)::VARCHAR END""",
]

# The hour's regular movements. A pair is drawn with density falling as p^(-1/3) (a few pairs are
# busy), then what happens: receipts home, transfers home -> consuming store, issues there (MES
# backflushes for half of the production consumption), scrap, returns, adjustments either side.
# Mean quantities balance each store's inflow and outflow, so stock wanders but does not drift.
REGULAR_EVENTS = """
CREATE OR REPLACE TEMP TABLE g_reg AS
WITH draw AS (
    SELECT i AS seq,
           least($pairs - 1, floor($pairs * pow(hash($seed, $h, i, 1) / 18446744073709551616.0, 1.5)))::BIGINT AS p,
           hash($seed, $h, i, 2) % 1000 AS r_kind, hash($seed, $h, i, 3) % 1000 AS r_q,
           (hash($seed, $h, i, 4) >> 2)::BIGINT AS r_ref, (hash($seed, $h, i, 5) % 3300)::BIGINT * 1000000 AS t_us
    FROM range($n_reg) AS r(i)
),
chosen AS (
    SELECT d.*, pr.h_k, pr.s_k,
           CASE WHEN r_kind < 325 THEN 'receipt' WHEN r_kind < 585 THEN 'transfer' WHEN r_kind < 910 THEN 'consume'
                WHEN r_kind < 930 THEN 'scrap' WHEN r_kind < 950 THEN 'return' ELSE 'adjust' END AS what
    FROM draw AS d JOIN g_pair AS pr USING (p)
),
placed AS (
    SELECT seq, r_q, r_ref, t_us,
           CASE WHEN what = 'transfer' AND s_k IS NULL THEN 'consume' ELSE what END AS act,
           CASE WHEN s_k IS NULL OR what IN ('receipt', 'transfer') OR (what = 'adjust' AND r_ref % 2 = 0)
                THEN h_k ELSE s_k END AS k,
           CASE WHEN what = 'transfer' THEN s_k END AS to_k
    FROM chosen
),
sized AS (
    SELECT p.*, g.material_type, g.step_milli, g.lot_milli,
           CASE act WHEN 'receipt' THEN 500 WHEN 'transfer' THEN 600 WHEN 'consume' THEN 500 WHEN 'scrap' THEN 50
                     WHEN 'return' THEN 100 ELSE 10 END AS f_lo,
           CASE act WHEN 'receipt' THEN 1500 WHEN 'transfer' THEN 1900 WHEN 'consume' THEN 1500 WHEN 'scrap' THEN 250
                     WHEN 'return' THEN 300 ELSE 100 END AS f_hi
    FROM placed AS p JOIN g_key AS g USING (k)
)
SELECT seq, 'regular' AS kind, k, to_k, t_us, r_ref,
       CASE act WHEN 'receipt' THEN 'receipt' WHEN 'return' THEN 'receipt' WHEN 'transfer' THEN 'transfer'
                 WHEN 'adjust' THEN 'adjustment' ELSE 'issue' END AS transaction_type,
       CASE act WHEN 'receipt' THEN CASE WHEN material_type IN ('wip', 'finished') THEN 'production_receipt'
                                          ELSE 'purchase_receipt' END
                 WHEN 'transfer' THEN 'stock_transfer'
                 WHEN 'consume' THEN CASE WHEN material_type = 'finished' THEN 'shipment'
                                          ELSE 'production_consumption' END
                 WHEN 'scrap' THEN 'scrap' WHEN 'return' THEN 'return' ELSE 'correction' END AS reason,
       CASE WHEN act = 'consume' AND material_type IN ('raw', 'packaging', 'wip') AND r_ref // 4 % 2 = 0
            THEN 'MES' ELSE 'ERP' END AS source_system,
       greatest(step_milli, lot_milli * (f_lo + r_q * (f_hi - f_lo) // 1000) // 1000 // step_milli * step_milli)
           * CASE WHEN act = 'adjust' AND r_ref // 2 % 2 = 1 THEN -1 ELSE 1 END AS q_milli
FROM sized
"""

# All the hour's movements but the cycle counts, with how each system booked them. mes_mode:
# snap = applied before the MES snapshot, late = after it but before the investigation looked,
# after = still in the pipeline when it looked, twice = applied twice, never.
EVENTS = """
CREATE OR REPLACE TEMP TABLE g_ev AS
WITH e AS (
    SELECT *, NULL::VARCHAR AS target_system, false AS msg_alt, NULL::BIGINT AS msg_q_milli, NULL::VARCHAR AS tx,
           NULL::VARCHAR AS erp_reference
    FROM g_reg
    UNION ALL BY NAME
    SELECT * FROM g_extra
),
timed AS (
    SELECT e.*, $hour_us + e.t_us AS at_us, (hash($seed, $h, e.seq, 11) >> 1)::BIGINT AS r_t,
           coalesce(e.msg_q_milli, CASE WHEN e.msg_alt THEN e.q_milli * 1000 ELSE e.q_milli END) AS msg_q,
           CASE WHEN e.kind IN ('missing_in_mes', 'not_published') OR e.target_system = 'ERP' THEN 'never'
                WHEN e.kind = 'late_delivery' THEN 'late' WHEN e.kind IN ('pending_sync', 'retrying') THEN 'after'
                WHEN e.kind = 'applied_twice' THEN 'twice' ELSE 'snap' END AS mes_mode
    FROM e
)
SELECT t.seq, t.kind, t.k, t.to_k, t.transaction_type, t.reason, t.source_system, t.target_system, t.msg_alt,
       t.q_milli, t.msg_q AS msg_q_milli, NULL::BIGINT AS erp_book, NULL::BIGINT AS mes_book, t.at_us AS t_us, t.r_t,
       coalesce(t.tx, tx_id(t.source_system, $h * $stride + t.seq, $year)) AS transaction_id,
       coalesce(t.erp_reference, erp_reference_of(t.reason, t.r_ref)) AS erp_reference,
       movement_type_of(t.reason, t.msg_q) AS movement_type,
       g.material_number, g.material_type, g.location, g.unit AS base_unit, g.wh_lc, g.queue,
       CASE WHEN t.msg_alt THEN g.alt_unit ELSE g.unit END AS msg_unit, o.location AS to_location,
       t.kind <> 'not_published' AS staged,
       CASE WHEN t.kind = 'missing_in_erp' THEN false WHEN t.source_system = 'RECON' THEN t.target_system = 'ERP'
            ELSE true END AS erp_books,
       t.mes_mode,
       CASE t.mes_mode WHEN 'never' THEN NULL
            WHEN 'late' THEN $mes_taken_us + 5000000 + t.r_t % 10000000
            WHEN 'after' THEN $observed_us + 60000000 + t.r_t % 840000000
            ELSE t.at_us + CASE WHEN t.source_system = 'MES' THEN 1000 + t.r_t % 20000 ELSE 50000 + t.r_t % 350000 END
       END AS applied_us
FROM timed AS t JOIN g_key AS g USING (k) LEFT JOIN g_key AS o ON o.k = t.to_k
"""

# What each system booked per material-location and unit (alt: the message's other unit).
EFFECTS = """
CREATE OR REPLACE TEMP TABLE g_fx AS
WITH erp AS (
    SELECT k, eff(transaction_type, q_milli) AS q FROM g_ev WHERE erp_books
    UNION ALL SELECT to_k, q_milli FROM g_ev WHERE erp_books AND transaction_type = 'transfer'
),
mes AS (
    SELECT k, msg_alt AS alt, mes_mode, eff(transaction_type, msg_q_milli) AS q FROM g_ev WHERE mes_mode <> 'never'
    UNION ALL
    SELECT to_k, msg_alt, mes_mode, msg_q_milli FROM g_ev WHERE mes_mode <> 'never' AND transaction_type = 'transfer'
)
SELECT k, alt, sum(erp_q)::BIGINT AS erp_d, sum(snap_q)::BIGINT AS mes_snap_d, sum(next_q)::BIGINT AS mes_next_d
FROM (
    SELECT k, false AS alt, q AS erp_q, 0 AS snap_q, 0 AS next_q FROM erp
    UNION ALL
    SELECT k, alt, 0, CASE mes_mode WHEN 'snap' THEN q WHEN 'twice' THEN 2 * q ELSE 0 END,
           CASE mes_mode WHEN 'twice' THEN 2 * q ELSE q END
    FROM mes
)
GROUP BY ALL
"""

# Cycle counts on material-locations without an open discrepancy: the counter finds the book
# stock, or (4 in 10) a little less. Both systems set their balance to it.
COUNTS = """
INSERT INTO g_ev BY NAME
WITH chosen AS (
    SELECT k, row_number() OVER (ORDER BY hash($seed, $h, k, 9)) AS n
    FROM g_key ANTI JOIN g_busy USING (k)
    ORDER BY hash($seed, $h, k, 9) LIMIT $n_counts
),
booked AS (
    SELECT c.n, g.*, s.erp + coalesce(f.erp_d, 0) AS erp_book, s.mes + coalesce(f.mes_snap_d, 0) AS mes_book,
           (hash($seed, $h, c.k, 10) >> 1)::BIGINT AS r
    FROM chosen AS c JOIN g_key AS g USING (k) JOIN g_state AS s USING (k)
    LEFT JOIN g_fx AS f ON f.k = c.k AND NOT f.alt
),
counted AS (
    SELECT *, greatest(0, erp_book - CASE WHEN r % 10 < 4
              THEN greatest(step_milli, lot_milli * (10 + r // 10 % 41) // 1000 // step_milli * step_milli)
              ELSE 0 END) AS counted
    FROM booked
)
SELECT $n_before + n AS seq, 'count' AS kind, k, 'cycle_count' AS transaction_type, 'physical_inventory' AS reason,
       'ERP' AS source_system, false AS msg_alt, counted AS q_milli, counted AS msg_q_milli, erp_book, mes_book,
       $hour_us + (3300 + r % 300) * 1000000 AS t_us, r AS r_t,
       tx_id('ERP', $h * $stride + $n_before + n, $year) AS transaction_id,
       erp_reference_of('physical_inventory', r >> 2) AS erp_reference,
       material_number, material_type, location, unit AS base_unit, wh_lc, queue, unit AS msg_unit,
       true AS staged, true AS erp_books, 'snap' AS mes_mode,
       $hour_us + (3300 + r % 300) * 1000000 + 50000 + r % 350000 AS applied_us
FROM counted
"""

BALANCES = """
CREATE OR REPLACE TEMP TABLE g_bal AS
WITH counts AS (SELECT k, q_milli AS counted FROM g_ev WHERE kind = 'count')
SELECT s.k, s.erp AS erp_begin, s.mes AS mes_begin,
       coalesce(c.counted, s.erp + coalesce(f.erp_d, 0)) AS erp_end,
       coalesce(c.counted, s.mes + coalesce(f.mes_snap_d, 0)) AS mes_end,
       coalesce(c.counted, s.mes + coalesce(f.mes_next_d, 0)) AS mes_next
FROM g_state AS s LEFT JOIN g_fx AS f ON f.k = s.k AND NOT f.alt LEFT JOIN counts AS c ON c.k = s.k;

CREATE OR REPLACE TEMP TABLE g_alt_bal AS
SELECT k, coalesce(a.mes, 0) AS mes_begin, coalesce(a.mes, 0) + coalesce(f.mes_snap_d, 0) AS mes_end,
       coalesce(a.mes, 0) + coalesce(f.mes_next_d, 0) AS mes_next
FROM g_alt AS a FULL JOIN (SELECT * FROM g_fx WHERE alt) AS f USING (k);
"""

SNAPSHOTS = """
INSERT INTO snapshots.erp_inventory
SELECT $hour, g.material_number, g.material_type, g.location, g.unit, dq(b.erp_begin), dq(b.erp_end),
       make_timestamptz($erp_taken_us), 'as_of_reconstruction'
FROM g_bal AS b JOIN g_key AS g USING (k) ORDER BY k;

INSERT INTO snapshots.mes_inventory
SELECT $hour, g.material_number, g.location, g.unit, dq(b.mes_begin), dq(b.mes_end), make_timestamptz($mes_taken_us),
       'as_of_api'
FROM g_bal AS b JOIN g_key AS g USING (k)
UNION ALL
SELECT $hour, g.material_number, g.location, g.alt_unit, dq(a.mes_begin), dq(a.mes_end),
       make_timestamptz($mes_taken_us), 'as_of_api'
FROM g_alt_bal AS a JOIN g_key AS g USING (k);

-- The ERP's material documents, one row per stock effect; a count posts its difference (701/702).
INSERT INTO snapshots.erp_movements
SELECT $hour, transaction_id, make_timestamptz(t_us), material_number, location, base_unit, transaction_type, reason,
       dq(q)
FROM (
    SELECT seq, transaction_id, t_us, material_number, location, base_unit, transaction_type, reason,
           eff(transaction_type, q_milli) AS q
    FROM g_ev WHERE erp_books AND kind <> 'count'
    UNION ALL
    SELECT seq, transaction_id, t_us, material_number, to_location, base_unit, transaction_type, reason, q_milli
    FROM g_ev WHERE erp_books AND transaction_type = 'transfer'
    UNION ALL
    SELECT seq, transaction_id, t_us, material_number, location, base_unit, 'adjustment', 'physical_inventory',
           q_milli - erp_book
    FROM g_ev WHERE kind = 'count' AND q_milli <> erp_book
)
ORDER BY t_us, seq;

-- Every application by the MES of the hour's events (both copies of one applied twice); the
-- MES records each count with the change it made.
CREATE OR REPLACE TEMP TABLE g_applied AS
SELECT e.*, c.copy, e.applied_us + c.copy * (20000000 + e.r_t % 70000000) AS applied_at_us
FROM g_ev AS e CROSS JOIN range(2) AS c(copy)
WHERE e.mes_mode <> 'never' AND (c.copy = 0 OR e.mes_mode = 'twice');

INSERT INTO snapshots.mes_applied
SELECT $hour, transaction_id, 'MES-' || lpad((2 * ($h * $stride + seq) + copy)::VARCHAR, 10, '0'), 'applied',
       make_timestamptz(t_us), make_timestamptz(applied_at_us), material_number, location, msg_unit, dq(q)
FROM (
    SELECT *, CASE WHEN kind = 'count' THEN msg_q_milli - mes_book ELSE eff(transaction_type, msg_q_milli) END AS q
    FROM g_applied WHERE mes_mode IN ('snap', 'twice')
    UNION ALL
    SELECT * REPLACE (to_location AS location), msg_q_milli AS q
    FROM g_applied WHERE mes_mode IN ('snap', 'twice') AND transaction_type = 'transfer'
)
ORDER BY applied_at_us, seq;

-- What the pipeline held when the hour was first investigated.
INSERT INTO recon.pipeline_backlog
SELECT $hour, transaction_id, CASE kind WHEN 'pending_sync' THEN 'plant.' || wh_lc || '.' || queue ELSE 'retry.1' END,
       kind, material_number, location, msg_unit, dq(eff(transaction_type, msg_q_milli)), to_location,
       CASE kind WHEN 'retrying' THEN 'MES unavailable: HTTP 503 Service Unavailable' END,
       make_timestamptz($observed_us)
FROM g_ev WHERE kind IN ('pending_sync', 'retrying') ORDER BY seq;

-- The MES log as read then: every transaction applied since the hour began, up to that moment,
-- including the previous hour's stragglers; the next hour's first minutes go in on the next pass.
INSERT INTO recon.mes_applied_observed
SELECT $hour, transaction_id, make_timestamptz(applied_at_us)
FROM (
    SELECT transaction_id, applied_at_us FROM g_applied_prev
    WHERE applied_at_us >= $hour_us AND applied_at_us < $observed_us
    UNION ALL
    SELECT transaction_id, applied_at_us FROM g_applied WHERE applied_at_us < $observed_us
)
ORDER BY applied_at_us;

INSERT INTO recon.mes_applied_observed
SELECT $prev_hour, transaction_id, make_timestamptz(applied_at_us)
FROM g_applied WHERE $h > 0 AND applied_at_us < $prev_observed_us ORDER BY applied_at_us;

CREATE OR REPLACE TEMP TABLE g_applied_prev AS SELECT transaction_id, applied_at_us FROM g_applied;
"""

# The staged log: a sensor tick every 30 s drains what was published since the last one into one
# segment per hour (named by the tick's time); a few messages are redelivered into a later one.
SEGMENTS = """
WITH staged AS (
    SELECT *, t_us // 1000000 + CASE WHEN source_system = 'RECON' THEN 0 ELSE r_t % 2 END AS pub_s
    FROM g_ev WHERE staged
),
copies AS (
    SELECT *, pub_s // 30 + 1 AS tick FROM staged
    UNION ALL
    SELECT * FROM (
        SELECT *, pub_s // 30 + 2 + (hash($seed, $h, seq, 14) % 5)::BIGINT AS tick FROM staged
        ORDER BY hash($seed, $h, seq, 15) LIMIT $n_dup
    )
),
ticked AS (SELECT *, tick * 30000000 + 50000 + (hash($seed, tick, 12) % 900000)::BIGINT AS recv_us FROM copies)
SELECT lpad((recv_us * 1000 + 250000)::VARCHAR, 20, '0') || '-' || $pid || '-'
           || printf('%08x', hash($seed, tick, 13) % 4294967296) AS segment_id,
       string_agg(
           '{"schema_version":"1","transaction_id":"' || transaction_id || '","timestamp":"' || iso(t_us)
           || '","source_system":"' || source_system || '","material_number":"' || material_number
           || '","material_type":"' || material_type || '","quantity":"' || qtext(msg_q_milli)
           || '","unit":"' || msg_unit || '","location":"' || location || '","transaction_type":"'
           || transaction_type || '","reason":"' || reason || '","erp_reference":"' || erp_reference || '"'
           || coalesce(',"to_location":"' || to_location || '"', '')
           || coalesce(',"movement_type":"' || movement_type || '"', '')
           || coalesce(',"target_system":"' || target_system || '"', '')
           || ',"received_at":"' || iso(recv_us) || '","routing_key":"inventory.' || wh_lc || '.' || material_type
           || '.' || transaction_type || '","published_at":"' || iso(pub_s * 1000000) || '"}',
           chr(10) ORDER BY pub_s, seq
       ) || chr(10) AS text
FROM ticked
GROUP BY ALL
"""


def _run(con: duckdb.DuckDBPyConnection, script: str, params: dict) -> list[tuple]:
    """Run each statement of `script` with the parameters it names; the rows of the last one."""
    result: list[tuple] = []
    for statement in re.split(r";\s*$", script, flags=re.MULTILINE):
        if statement.strip():
            used = set(re.findall(r"\$(\w+)", statement))
            result = con.execute(statement, {n: v for n, v in params.items() if n in used}).fetchall()
    return result


def _store_corrections(con: duckdb.DuckDBPyConnection, corrections: list[dict], audit: list[tuple]) -> None:
    columns = ["correction_id", "partition_hour", "material_number", "material_type", "location", "unit", "cause",
               "target_system", "quantity", "truth", "rule", "pct_of_balance", "value", "critical", "status",
               "decided_by", "decided_at", "before_quantity", "after_quantity", "explained_by", "effective_at",
               "note", "method"]  # fmt: skip
    decimals = {"quantity", "pct_of_balance", "value", "before_quantity", "after_quantity"}
    frame = pd.DataFrame([[str(c[n]) if n in decimals and c[n] is not None else c[n] for n in columns]
                          for c in corrections], columns=columns).astype(object)  # fmt: skip
    con.register("corrections_frame", frame)
    con.execute(f"""INSERT INTO recon.corrections SELECT {', '.join(
        f"{n}::DECIMAL(18, 6)" if n in decimals else f"{n}::VARCHAR[]" if n == "explained_by" else n
        for n in columns)} FROM corrections_frame""")  # fmt: skip
    con.unregister("corrections_frame")
    audit_columns = ["logged_at", "correction_id", "action", "actor", "partition_hour", "material_number", "location",
                     "unit", "target_system", "quantity", "rule", "cause", "before_quantity", "after_quantity",
                     "transaction_ids", "note"]  # fmt: skip
    trail = pd.DataFrame([[str(v) if isinstance(v, Decimal) else v for v in row] for row in audit],
                         columns=audit_columns).astype(object)  # fmt: skip
    con.register("audit_frame", trail)
    con.execute(f"""INSERT INTO recon.correction_audit_log SELECT {', '.join(
        f"{n}::DECIMAL(18, 6)" if n in ("quantity", "before_quantity", "after_quantity")
        else f"{n}::VARCHAR[]" if n == "transaction_ids" else n for n in audit_columns)}
        FROM audit_frame ORDER BY logged_at""")  # fmt: skip
    con.unregister("audit_frame")


def _investigation_inputs(con: duckdb.DuckDBPyConnection, hour: datetime, observed_us: int, backlog_rows: int,
                          window_minutes: int) -> None:  # fmt: skip
    con.execute(
        """INSERT INTO recon.investigation_inputs
           SELECT $hour, make_timestamptz($observed_us), $backlog,
                  (SELECT count(*) FROM recon.mes_applied_observed WHERE partition_hour = $hour), $window""",
        {"hour": hour, "observed_us": observed_us, "backlog": backlog_rows, "window": window_minutes},
    )
