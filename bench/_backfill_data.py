"""Synthetic history for bench/backfill.py: a plant's hours as the live system left them after reconciling each once.

``generate`` writes, under an INVSYNC_HOME, the staged event log (one JSON Lines segment per
ledger-tap sensor tick, in the layout and format of messaging/staged_log.py) and a
warehouse.duckdb holding what each hour's first reconciliation stored: both systems' begin and
end stock, the ERP's material documents and material master, the MES's applied log, the
investigation's inputs (pipeline backlog, MES log as observed) and the corrections it decided.
A backfill of these hours then reuses the snapshots and inputs, and decides no correction twice.

The plant: material-locations in pairs, a home store and a consuming one (RM01 -> PS01, FG01 ->
SH01, ...) in WH01 and WH02. Receipts arrive home, transfers move stock on, issues consume it
(half of the production consumption is backflushed by the MES), plus scrap, returns, adjustments
and, at minutes 55-59 when the plant is quiet, cycle counts. Activity is skewed: a few pairs move
much more than the rest. Every hour a few discrepancies are injected, each on a material-location
of its own: events the MES never applied, applied late, still queued or retrying, applied twice,
received in another unit; ERP documents never published; MES backflushes the ERP never booked.
Each is corrected as the live pipeline would: by data/rules.yaml, in the next hour (a RECON
adjustment through the exchange), or, when held for review, by a supervisor a few hours later.

Per-event work is DuckDB SQL with hash()-based choices, so the same arguments give the same data;
only the few discrepancies and their corrections are planned in Python.
"""

from __future__ import annotations

import csv
import math
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd

from invsync_pipeline.messaging.staged_log import HOUR_DIR_FORMAT
from invsync_pipeline.recon.corrections import correction_id
from invsync_pipeline.recon.rules import Rules, load_rules
from invsync_pipeline.warehouse import open_warehouse

HOUR_US = 3_600_000_000
COUNT_SHARE = 0.02  # cycle counts, as a share of the hour's events
# Injected per hour (scaled down for very small plants). applied_twice is what the investigation
# cannot explain: it finds `unexplained`.
DISCREPANCIES = {"unit_mismatch": 1, "missing_in_erp": 2, "missing_in_mes": 14, "late_delivery": 3,
                 "pending_sync": 1, "retrying": 1, "not_published": 2, "applied_twice": 2}  # fmt: skip
EXPECTED_CAUSE = {**{kind: kind for kind in DISCREPANCIES}, "applied_twice": "unexplained"}
TIMING = {"late_delivery", "pending_sync", "retrying"}
UNIT_MISMATCH_MAX_VALUE = 900  # EUR of a unit-mismatched receipt: x1000 in the smaller unit stays below 1e6
SUPERVISORS = ("M. Keller", "A. Novak", "J. Smith")

# Material master: type shares (%), base units, smaller units a message may carry, and how much
# a typical movement (lot) is, in units; unit cost in cents.
TYPES = (("raw", 35), ("packaging", 15), ("wip", 15), ("finished", 20), ("mro", 15))
UNITS = {"raw": ("KG", "KG", "L", "M"), "packaging": ("EA", "EA", "M"), "wip": ("EA", "EA", "KG"),
         "finished": ("EA",), "mro": ("EA", "EA", "L")}  # fmt: skip
SMALLER_UNIT = {"KG": "G", "L": "ML", "M": "MM", "EA": "EA"}
STEP_MILLI = {"EA": 1000, "M": 100, "KG": 1, "L": 1}
LOT_UNITS = {"EA": (5, 100), "M": (50, 1000), "KG": (20, 500), "L": (10, 200)}
COST_CENTS = {"raw": (50, 1500), "packaging": (2, 1000), "wip": (1000, 6000), "finished": (1000, 60000),
              "mro": (100, 1000)}  # fmt: skip
STORES = {"raw": ("RM01", "PS01"), "packaging": ("PK01", "PS01"), "wip": ("WP01", "PS01"),
          "finished": ("FG01", "SH01"), "mro": ("MR01", "MR02")}  # fmt: skip
NUMBER_PREFIX = {"raw": "1", "packaging": "2", "wip": "3", "finished": "4", "mro": "9"}

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

# The warehouse tables this module fills (staging, ledger and recon results are the backfill's job).
TABLES = ("snapshots.erp_inventory", "snapshots.mes_inventory", "snapshots.erp_movements", "snapshots.mes_applied",
          "snapshots.erp_materials", "recon.investigation_inputs", "recon.mes_applied_observed",
          "recon.pipeline_backlog", "recon.corrections", "recon.correction_audit_log")  # fmt: skip
EXTRA_COLUMNS = {"seq": "BIGINT", "kind": "VARCHAR", "k": "BIGINT", "to_k": "BIGINT", "t_us": "BIGINT",
                 "r_ref": "BIGINT", "transaction_type": "VARCHAR", "reason": "VARCHAR", "source_system": "VARCHAR",
                 "q_milli": "BIGINT", "target_system": "VARCHAR", "msg_alt": "BOOLEAN", "msg_q_milli": "BIGINT",
                 "tx": "VARCHAR", "erp_reference": "VARCHAR"}  # fmt: skip


@dataclass(frozen=True)
class _Key:
    k: int
    slot: int  # 0 home store, 1 consuming store
    material_number: str
    material_type: str
    location: str
    unit: str
    alt_unit: str
    lot_milli: int
    step_milli: int
    unit_cost: Decimal
    abc_class: str


@dataclass
class _Discrepancy:
    hour: int
    kind: str
    key: _Key
    seq: int
    transaction_type: str
    reason: str
    source: str
    q_milli: int  # > 0, in the base unit
    t_us: int
    r_ref: int
    transaction_id: str = ""

    @property
    def effect(self) -> int:
        return self.q_milli if self.transaction_type == "receipt" else -self.q_milli


def _plant(material_locations: int, events_per_hour: int, hours: int, seed: int) -> tuple[list[_Key], pd.DataFrame]:
    """Material master and material-locations: key k is pair k // 2 (material k // 4 in WH01 or
    WH02), store k % 2; each key's opening stock grows with how busy its pair is."""
    rng = random.Random(f"invsync-backfill-plant:{seed}")
    pairs = (material_locations + 1) // 2
    materials = []
    for m in range((pairs + 1) // 2):
        material_type = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
        unit = rng.choice(UNITS[material_type])
        low, high = (2, 30) if material_type == "finished" else LOT_UNITS[unit]
        cents = rng.randint(*COST_CENTS[material_type])
        abc = "A" if cents >= COST_CENTS[material_type][1] * 0.7 else rng.choice("BCC")
        materials.append((f"{NUMBER_PREFIX[material_type]}{m:07d}", material_type, unit, rng.randint(low, high) * 1000,
                          Decimal(cents) / 100, abc))  # fmt: skip
    keys, rows = [], []
    for k in range(material_locations):
        p, slot = divmod(k, 2)
        number, material_type, unit, lot, cost, abc = materials[p // 2]
        key = _Key(k, slot, number, material_type, f"WH0{p % 2 + 1}/{STORES[material_type][slot]}", unit,
                   SMALLER_UNIT[unit], lot, STEP_MILLI[unit], cost, abc)  # fmt: skip
        share = ((p + 1) / pairs) ** (2 / 3) - (p / pairs) ** (2 / 3)  # of the hour's events
        opening = lot * round(30 + 6 * math.sqrt(events_per_hour * share * hours))
        keys.append(key)
        rows.append((k, p, slot, number, material_type, unit, key.alt_unit, STEP_MILLI[unit], lot, key.location,
                     key.location[:4].lower(), {"raw": "raw", "finished": "finished"}.get(material_type, "other"),
                     opening))  # fmt: skip
    columns = ["k", "p", "slot", "material_number", "material_type", "unit", "alt_unit", "step_milli", "lot_milli",
               "location", "wh_lc", "queue", "opening"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    return keys, frame


def _materials(keys: list[_Key], taken_at: datetime) -> pd.DataFrame:
    seen = {k.material_number: k for k in keys}
    return pd.DataFrame([(n, k.material_type, k.unit, str(k.unit_cost), "EUR", k.abc_class, taken_at)
                         for n, k in seen.items()],
                        columns=["material_number", "material_type", "base_unit", "unit_cost", "currency", "abc_class",
                                 "taken_at"])  # fmt: skip


def _plan(h: int, keys: list[_Key], busy_until: dict[int, int], rng: random.Random, scale: float) -> list[_Discrepancy]:
    """This hour's discrepancies, each on a material-location with nothing else open."""
    planned: list[_Discrepancy] = []
    for kind, per_hour in DISCREPANCIES.items():
        for _ in range(round(per_hour * scale)):
            for _attempt in range(500):
                key = keys[rng.randrange(len(keys))]
                if busy_until.get(key.k, -1) >= h:
                    continue
                if kind == "unit_mismatch" and (key.slot != 0 or key.alt_unit == key.unit):
                    continue
                if kind == "missing_in_erp" and (key.slot != 1 or key.material_type not in ("raw", "packaging", "wip")):
                    continue
                break
            else:
                continue  # a plant this small has no free material-location left
            busy_until[key.k] = h + 1
            if key.slot == 0:
                kind_of, reason = "receipt", ("production_receipt" if key.material_type in ("wip", "finished")
                                              else "purchase_receipt")  # fmt: skip
            else:
                kind_of, reason = "issue", "shipment" if key.material_type == "finished" else "production_consumption"
            q = max(key.step_milli, key.lot_milli * rng.randint(500, 1500) // 1000 // key.step_milli * key.step_milli)
            if kind == "unit_mismatch":
                # variance_report values the row in the smaller unit at the base unit's cost, in
                # DECIMAL(18,12): 1,000,000 or more overflows it, so these receipts stay small.
                most = int(UNIT_MISMATCH_MAX_VALUE * 1000 / key.unit_cost) // key.step_milli * key.step_milli
                q = min(q, max(key.step_milli, most))
            planned.append(_Discrepancy(h, kind, key, -1, kind_of, reason,
                                        "MES" if kind == "missing_in_erp" else "ERP", q,
                                        rng.randrange(300, 3000) * 1_000_000, rng.getrandbits(60)))  # fmt: skip
    return planned


def _findings(d: _Discrepancy, erp_end: int, mes_end: int, alt_end: int) -> list[tuple]:
    """What the investigation will say about a discrepancy, as correction candidates:
    (unit, system, cause, explained milli, transaction_ids, reason, erp_end, mes_end)."""
    key, tx = d.key, [d.transaction_id]
    if d.kind in TIMING:
        return []
    if d.kind == "missing_in_erp":
        return [(key.unit, "ERP", d.kind, d.effect, tx, d.reason, erp_end, mes_end)]
    if d.kind == "unit_mismatch":
        return [(key.unit, "MES", d.kind, d.effect, tx, d.reason, erp_end, mes_end),
                (key.alt_unit, "ERP", d.kind, d.effect * 1000, tx, d.reason, 0, alt_end)]  # fmt: skip
    if d.kind == "applied_twice":
        return [(key.unit, "MES", "unexplained", erp_end - mes_end, [], None, erp_end, mes_end)]
    return [(key.unit, "MES", d.kind, d.effect, tx, d.reason, erp_end, mes_end)]


def _milli(value: int) -> Decimal:
    return Decimal(value).scaleb(-3)


def _decide(rules: Rules, hour: datetime, key: _Key, finding: tuple) -> dict:
    """The decision recon/corrections.py `decide` takes on a finding (same rules, same arithmetic)."""
    unit, system, cause, explained, tx_ids, reason, erp_end, mes_end = finding
    q, erp, mes = _milli(explained), _milli(erp_end), _milli(mes_end)
    rule = rules.truth_for(reason)
    other = "ERP" if system == "MES" else "MES"
    target, quantity = (system, q) if rule.truth == other else (other, -q)
    base = max(abs(erp), abs(mes))
    pct = (abs(quantity) / base * 100).quantize(Decimal("0.0001")) if base else Decimal(100)
    value = (abs(quantity) * key.unit_cost).quantize(Decimal("0.01"))
    threshold = rules.threshold_for(key.material_type, key.abc_class)
    critical = pct > Decimal(str(threshold.critical_pct)) or value > Decimal(str(threshold.critical_value))
    if cause in rules.always_review:
        note = f"cause {cause} always waits for a person"
    elif critical:
        note = (f"critical: {pct}% of the balance (limit {threshold.critical_pct}%), "
                f"value {value} (limit {threshold.critical_value})")  # fmt: skip
    else:
        note = None
    return {"correction_id": correction_id(hour, key.material_number, key.location, unit, cause, tx_ids),
            "partition_hour": hour, "material_number": key.material_number, "material_type": key.material_type,
            "location": key.location, "unit": unit, "cause": cause, "target_system": target, "quantity": quantity,
            "truth": rule.truth, "rule": rule.name, "pct_of_balance": pct, "value": value, "critical": critical,
            "status": "held_for_review" if critical or cause in rules.always_review else "applied",
            "decided_by": f"auto:{rule.name}", "before_quantity": erp if target == "ERP" else mes,
            "explained_by": sorted(tx_ids), "note": note}  # fmt: skip


def _usable_home(home: Path) -> None:
    warehouse, events = home / "warehouse.duckdb", home / "staged" / "events"
    if warehouse.exists() or (events.is_dir() and any(events.iterdir())):
        raise FileExistsError(f"{home} already holds a warehouse or staged events; generate into an empty directory")


def generate(
    home: Path,
    *,
    hours: int = 504,
    material_locations: int = 50_000,
    events_per_hour: int = 100_000,
    start: datetime = datetime(2025, 3, 3, tzinfo=UTC),
    seed: int = 1,
) -> dict:
    """Write `hours` reconciled hours from `start` under `home` (the INVSYNC_HOME of the backfill).

    Returns figures: seconds, events staged, segment files, rows per warehouse table, bytes on
    disk, discrepancies injected per kind and corrections per status. The ground truth, one row
    per discrepancy with the cause the investigation should find, is in bench_ground_truth.csv."""
    if start.tzinfo is None or start.utcoffset() != timedelta(0) or start.minute or start.second or start.microsecond:
        raise ValueError(f"start={start.isoformat()}: give a whole hour in UTC")
    if hours < 1 or material_locations < 20 or events_per_hour < 100:
        raise ValueError("need hours >= 1, material_locations >= 20 and events_per_hour >= 100")
    started = time.perf_counter()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    _usable_home(home)
    keys, key_frame = _plant(material_locations, events_per_hour, hours, seed)
    history = _History(home, keys, hours, events_per_hour, seed)
    scratch = Path(tempfile.mkdtemp(prefix="invsync-backfill-gen-"))
    try:
        with open_warehouse(home / "warehouse.duckdb") as con:
            con.execute(f"SET temp_directory = '{scratch}'")
            con.execute("SET memory_limit = '6GB'")
            for macro in MACROS:
                con.execute(macro)
            con.register("key_frame", key_frame)
            con.execute("CREATE TEMP TABLE g_key AS SELECT * EXCLUDE (opening) FROM key_frame")
            con.execute("CREATE TEMP TABLE g_state AS SELECT k, opening AS erp, opening AS mes FROM key_frame")
            con.unregister("key_frame")
            con.execute("""CREATE TEMP TABLE g_pair AS
                           SELECT p, min(k) AS h_k, max(k) FILTER (WHERE slot = 1) AS s_k FROM g_key GROUP BY p""")
            con.execute("CREATE TEMP TABLE g_alt (k BIGINT, mes BIGINT)")
            con.execute("CREATE TEMP TABLE g_applied_prev (transaction_id VARCHAR, applied_at_us BIGINT)")
            for h in range(hours):
                history.hour(con, h, start + timedelta(hours=h))
                if (h + 1) % 24 == 0:
                    print(f"generated {h + 1} of {hours} hours ({time.perf_counter() - started:.0f} s)",
                          file=sys.stderr, flush=True)  # fmt: skip
            history.finish(con)
            con.execute("CHECKPOINT")
            rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    history.write_ground_truth(home / "bench_ground_truth.csv")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "hours": hours, "material_locations": material_locations, "events_per_hour": events_per_hour,
        "first_partition": f"{start:%Y-%m-%d-%H:%M}", "staged_events": history.staged_events,
        "staged_segments": history.staged_files, "staged_bytes": history.staged_bytes,
        "warehouse_bytes": (home / "warehouse.duckdb").stat().st_size,
        "bytes_on_disk": sum(p.stat().st_blocks * 512 for p in home.rglob("*") if p.is_file()),
        "rows": rows, "injected": dict(Counter(row[1] for row in history.truth)),
        "corrections": dict(Counter(c["status"] for c in history.corrections)),
    }  # fmt: skip


def _run(con: duckdb.DuckDBPyConnection, script: str, params: dict) -> list[tuple]:
    """Run each statement of `script` with the parameters it names; the rows of the last one."""
    result: list[tuple] = []
    for statement in re.split(r";\s*$", script, flags=re.MULTILINE):
        if statement.strip():
            used = set(re.findall(r"\$(\w+)", statement))
            result = con.execute(statement, {n: v for n, v in params.items() if n in used}).fetchall()
    return result


class _History:
    """Hour by hour: the events, both systems' books, the staged log, and the live decisions."""

    def __init__(self, home: Path, keys: list[_Key], hours: int, events_per_hour: int, seed: int):
        self.events_dir = home / "staged" / "events"
        self.keys, self.hours, self.events_per_hour, self.seed = keys, hours, events_per_hour, seed
        self.rules = load_rules()
        self.rng = random.Random(f"invsync-backfill-discrepancies:{seed}")
        self.scale = min(1.0, len(keys) / 1000, events_per_hour / 1000)
        self.stride = 10 ** len(str(events_per_hour + 1000))  # transaction numbers: hour * stride + seq
        self.n_counts = min(round(events_per_hour * COUNT_SHARE), len(keys) // 2)
        self.pairs = (len(keys) + 1) // 2
        self.busy_until: dict[int, int] = {}  # key -> last hour with a discrepancy open there
        self.recon_due: dict[int, list[dict]] = {}  # hour -> RECON corrections taking effect in it
        self.corrections: list[dict] = []
        self.audit: list[tuple] = []
        self.truth: list[tuple] = []
        self.staged_events = self.staged_files = self.staged_bytes = 0
        self.prev: tuple[datetime, int, int] | None = None  # (hour, observed_us, backlog rows)
        self.last_taken_us = 0

    def hour(self, con: duckdb.DuckDBPyConnection, h: int, hour: datetime) -> None:
        rng = self.rng
        hour_us = int(hour.timestamp()) * 1_000_000
        # The live run at HH:05 of the next hour: snapshots, then the investigation, then corrections.
        erp_taken_us = hour_us + HOUR_US + 301_000_000 + rng.randrange(1_000_000)
        mes_taken_us = erp_taken_us + 2_000_000 + rng.randrange(1_000_000)
        observed_us = mes_taken_us + 15_000_000 + rng.randrange(5_000_000)
        decided_us = observed_us + 5_000_000 + rng.randrange(1_000_000)
        self.last_taken_us = erp_taken_us
        recon = self.recon_due.pop(h, [])
        discs = _plan(h, self.keys, self.busy_until, rng, self.scale)
        n_reg = self.events_per_hour - self.n_counts - sum(d.kind != "not_published" for d in discs) - len(recon)
        if n_reg < 0:
            raise ValueError(f"events_per_hour={self.events_per_hour} is too few for the counts and discrepancies")
        for j, d in enumerate(discs):
            d.seq = n_reg + j
        first_recon = n_reg + len(discs)
        extra = [(d.seq, d.kind, d.key.k, None, d.t_us, d.r_ref, d.transaction_type, d.reason, d.source, d.q_milli,
                  None, d.kind == "unit_mismatch", None, None, None) for d in discs]  # fmt: skip
        extra += [(first_recon + i, "recon", r["k"], None, r["t_us"], 0, "adjustment", "correction", "RECON",
                   r["q_milli"], r["target"], r["alt"], r["q_milli"], r["cid"], r["cid"])
                  for i, r in enumerate(recon)]  # fmt: skip
        con.register("extra_frame", pd.DataFrame(extra, columns=list(EXTRA_COLUMNS)).astype(object))
        casts = ", ".join(f"{c}::{t} AS {c}" for c, t in EXTRA_COLUMNS.items())
        con.execute(f"CREATE OR REPLACE TEMP TABLE g_extra AS SELECT {casts} FROM extra_frame")
        con.unregister("extra_frame")
        busy = pd.DataFrame({"k": [k for k, until in self.busy_until.items() if until >= h]}, dtype="int64")
        con.register("busy_frame", busy)
        con.execute("CREATE OR REPLACE TEMP TABLE g_busy AS SELECT k FROM busy_frame")
        con.unregister("busy_frame")
        prev_hour, prev_observed_us, prev_backlog = self.prev or (hour, 0, 0)
        params = {"seed": self.seed, "h": h, "hour": hour, "hour_us": hour_us, "year": f"{hour:%Y}",
                  "stride": self.stride, "pairs": self.pairs, "n_reg": n_reg, "n_counts": self.n_counts,
                  "n_before": first_recon + len(recon), "erp_taken_us": erp_taken_us, "mes_taken_us": mes_taken_us,
                  "observed_us": observed_us, "prev_hour": prev_hour, "prev_observed_us": prev_observed_us,
                  "pid": str(20000 + self.seed % 10000), "n_dup": max(1, self.events_per_hour // 30000)}  # fmt: skip
        for script in (REGULAR_EVENTS, EVENTS, EFFECTS, COUNTS, BALANCES, SNAPSHOTS):
            _run(con, script, params)
        if self.prev:
            _investigation_inputs(con, prev_hour, prev_observed_us, prev_backlog)
        self.prev = (hour, observed_us, sum(d.kind in ("pending_sync", "retrying") for d in discs))
        self._write_segments(con, hour, params)
        # What the hour's first investigation found, and what the rules decided about it.
        ids = dict(con.execute("SELECT seq, transaction_id FROM g_ev WHERE seq >= $s AND seq < $e",
                               {"s": n_reg, "e": first_recon}).fetchall())  # fmt: skip
        where = {"keys": [d.key.k for d in discs] or [-1]}
        ends = {k: (e, m) for k, e, m in con.execute(
            "SELECT k, erp_end, mes_end FROM g_bal WHERE list_contains($keys, k)", where).fetchall()}  # fmt: skip
        alt_ends = dict(con.execute("SELECT k, mes_end FROM g_alt_bal WHERE list_contains($keys, k)", where).fetchall())
        for d in discs:
            d.transaction_id = ids[d.seq]
            self._decide(d, hour, *ends[d.key.k], alt_ends.get(d.key.k, 0), decided_us, hour_us)
        con.execute("CREATE OR REPLACE TEMP TABLE g_state AS SELECT k, erp_end AS erp, mes_next AS mes FROM g_bal")
        con.execute("CREATE OR REPLACE TEMP TABLE g_alt AS SELECT k, mes_next AS mes FROM g_alt_bal")

    def _write_segments(self, con: duckdb.DuckDBPyConnection, hour: datetime, params: dict) -> None:
        folder = self.events_dir / hour.strftime(HOUR_DIR_FORMAT)
        folder.mkdir(parents=True, exist_ok=True)
        for segment_id, text in _run(con, SEGMENTS, params):
            (folder / f"{segment_id}.jsonl").write_text(text)
            self.staged_bytes += len(text)
            self.staged_files += 1
        self.staged_events += con.execute("SELECT count(*) FROM g_ev WHERE staged").fetchone()[0]

    def _decide(self, d: _Discrepancy, hour: datetime, erp_end: int, mes_end: int, alt_end: int, decided_us: int,
                hour_us: int) -> None:  # fmt: skip
        """Decide as auto_corrections did; an applied correction takes effect in the next hour, a
        held one when a supervisor approves it 2-11 hours later (if that is within the range)."""
        h, key = d.hour, d.key
        self.truth.append((f"{hour:%Y-%m-%d-%H:%M}", d.kind, EXPECTED_CAUSE[d.kind], key.material_number, key.location,
                           key.alt_unit if d.kind == "unit_mismatch" else key.unit, d.transaction_id,
                           str(_milli(d.effect))))  # fmt: skip
        decided = [_decide(self.rules, hour, key, f) for f in _findings(d, erp_end, mes_end, alt_end)]
        if not decided:
            return  # a timing cause: nothing to correct; the MES catches up by the next hour
        held = any(c["status"] == "held_for_review" for c in decided)
        effective_h = h + (2 + self.rng.randrange(10) if held else 1)
        if held:
            offset_us = self.rng.randrange(600, 3000) * 1_000_000 + self.rng.randrange(1, 1_000_000)
        else:
            offset_us = decided_us - hour_us - HOUR_US  # "now", a few minutes into the next hour
        resolved = effective_h < self.hours
        effective = datetime.fromtimestamp((hour_us + (effective_h - h) * HOUR_US + offset_us) / 1e6, UTC)
        self.busy_until[key.k] = effective_h if resolved else self.hours
        for c in decided:
            _record(c, held, resolved, decided_us, effective, self.rng, self.corrections, self.audit)
            if resolved:
                self.recon_due.setdefault(effective_h, []).append(
                    {"k": key.k, "t_us": offset_us, "q_milli": int(c["quantity"] * 1000), "target": c["target_system"],
                     "alt": c["unit"] != key.unit, "cid": c["correction_id"]})  # fmt: skip

    def finish(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.prev:
            _investigation_inputs(con, *self.prev)
        _store_corrections(con, self.corrections, self.audit)
        con.register("materials_frame", _materials(self.keys, datetime.fromtimestamp(self.last_taken_us / 1e6, UTC)))
        con.execute("""INSERT INTO snapshots.erp_materials SELECT material_number, material_type, base_unit,
                       unit_cost::DECIMAL(18, 6), currency, abc_class, taken_at FROM materials_frame""")
        con.unregister("materials_frame")

    def write_ground_truth(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["partition_key", "kind", "expected_cause", "material_number", "location", "unit",
                             "transaction_id", "quantity_effect"])  # fmt: skip
            writer.writerows(self.truth)


def _record(c: dict, held: bool, resolved: bool, decided_us: int, effective: datetime, rng: random.Random,
            corrections: list[dict], audit: list[tuple]) -> None:  # fmt: skip
    """The correction row and its audit trail as the live run (and a supervisor) left them."""
    decided = datetime.fromtimestamp(decided_us / 1e6, UTC)
    before, quantity = c["before_quantity"], c["quantity"]

    def trail(at: datetime, action: str, actor: str, after: Decimal | None, note: str | None) -> tuple:
        return (at, c["correction_id"], action, actor, c["partition_hour"], c["material_number"], c["location"],
                c["unit"], c["target_system"], quantity, c["rule"], c["cause"], before, after, c["explained_by"], note)

    if not held:
        c.update(decided_at=decided, after_quantity=before + quantity, effective_at=effective)
        audit.append(trail(decided, "applied", c["decided_by"], before + quantity, c["note"]))
    else:
        audit.append(trail(decided, "held", c["decided_by"], None, c["note"]))
        c.update(decided_at=decided, after_quantity=None, effective_at=None)
        if resolved:
            actor = f"supervisor:{rng.choice(SUPERVISORS)}"
            note = "counted again; the ERP figure is right"
            c.update(status="approved", decided_by=actor, decided_at=effective, after_quantity=before + quantity,
                     effective_at=effective, note=note)  # fmt: skip
            audit.append(trail(effective, "approved", actor, before + quantity, note))
    corrections.append(c)


def _store_corrections(con: duckdb.DuckDBPyConnection, corrections: list[dict], audit: list[tuple]) -> None:
    columns = ["correction_id", "partition_hour", "material_number", "material_type", "location", "unit", "cause",
               "target_system", "quantity", "truth", "rule", "pct_of_balance", "value", "critical", "status",
               "decided_by", "decided_at", "before_quantity", "after_quantity", "explained_by", "effective_at", "note"]
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


def _investigation_inputs(con: duckdb.DuckDBPyConnection, hour: datetime, observed_us: int, backlog_rows: int) -> None:
    con.execute(
        """INSERT INTO recon.investigation_inputs
           SELECT $hour, make_timestamptz($observed_us), $backlog,
                  (SELECT count(*) FROM recon.mes_applied_observed WHERE partition_hour = $hour)""",
        {"hour": hour, "observed_us": observed_us, "backlog": backlog_rows},
    )
