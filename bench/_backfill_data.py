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
The SQL is in _backfill_sql.py; the plant, the discrepancies and the corrections in
_backfill_plant.py.
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
from _backfill_plant import (
    EXPECTED_CAUSE,
    _decide,
    _Discrepancy,
    _findings,
    _Key,
    _materials,
    _milli,
    _plan,
    _plant,
    _record,
)
from _backfill_sql import (
    BALANCES,
    COUNTS,
    EFFECTS,
    EVENTS,
    MACROS,
    REGULAR_EVENTS,
    SEGMENTS,
    SNAPSHOTS,
    _investigation_inputs,
    _run,
    _store_corrections,
)

from invsync_pipeline.messaging.staged_log import HOUR_DIR_FORMAT
from invsync_pipeline.recon.rules import load_rules
from invsync_pipeline.settings import load_settings
from invsync_pipeline.warehouse import open_warehouse

HOUR_US = 3_600_000_000
COUNT_SHARE = 0.02  # cycle counts, as a share of the hour's events

# The warehouse tables this module fills (staging, ledger and recon results are the backfill's job).
TABLES = ("snapshots.erp_inventory", "snapshots.mes_inventory", "snapshots.erp_movements", "snapshots.mes_applied",
          "snapshots.erp_materials", "recon.investigation_inputs", "recon.mes_applied_observed",
          "recon.pipeline_backlog", "recon.corrections", "recon.correction_audit_log")  # fmt: skip
EXTRA_COLUMNS = {"seq": "BIGINT", "kind": "VARCHAR", "k": "BIGINT", "to_k": "BIGINT", "t_us": "BIGINT",
                 "r_ref": "BIGINT", "transaction_type": "VARCHAR", "reason": "VARCHAR", "source_system": "VARCHAR",
                 "q_milli": "BIGINT", "target_system": "VARCHAR", "msg_alt": "BOOLEAN", "msg_q_milli": "BIGINT",
                 "tx": "VARCHAR", "erp_reference": "VARCHAR"}  # fmt: skip


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


class _History:
    """Hour by hour: the events, both systems' books, the staged log, and the live decisions."""

    def __init__(self, home: Path, keys: list[_Key], hours: int, events_per_hour: int, seed: int):
        self.events_dir = home / "staged" / "events"
        self.keys, self.hours, self.events_per_hour, self.seed = keys, hours, events_per_hour, seed
        settings = load_settings()
        self.rules = load_rules(settings.reconciliation.rules_path)
        self.window = settings.reconciliation.in_flight_window_minutes  # as the live runs recorded it
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
            _investigation_inputs(con, prev_hour, prev_observed_us, prev_backlog, self.window)
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
            _investigation_inputs(con, *self.prev, self.window)
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
