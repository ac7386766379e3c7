"""The simulator's ground truth in ``<home>/simulation.sqlite``, and the stock comparison reconciliation is scored by.

Tables (one row set per run; running the same plan again replaces its rows):

- ``simulation_runs``: seed, start, hours, plant size, fault profile, when, and what was published
- ``injected_faults``: per fault and (material, location, unit) it touched: the transaction ids,
  the signed effect on ERP and on MES stock, the hour, and the cause reconciliation should report
- ``planned_events``: every event of the run and how it was delivered
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from invsync_pipeline.contract import instant_text
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.sim_model import Simulation
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.erp import ErpDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS simulation_runs (
    run_id        TEXT PRIMARY KEY,
    seed          INTEGER NOT NULL,
    start         TEXT NOT NULL,      -- first simulated hour, UTC
    hours         INTEGER NOT NULL,
    plant_size    TEXT NOT NULL,
    profile       TEXT NOT NULL,
    profile_counts TEXT NOT NULL,     -- JSON {fault type: count}
    created_at    TEXT NOT NULL,
    finished_at   TEXT,               -- NULL while running, or when the run failed
    events        INTEGER NOT NULL,
    faults        INTEGER NOT NULL,
    published     INTEGER,            -- messages put on the exchange or the tap, duplicates counted
    namespace     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS injected_faults (
    run_id            TEXT NOT NULL,
    fault_id          TEXT NOT NULL,
    fault_type        TEXT NOT NULL,
    transaction_ids   TEXT NOT NULL,  -- JSON list
    material_number   TEXT NOT NULL,
    material_type     TEXT NOT NULL,
    location          TEXT NOT NULL,
    unit              TEXT NOT NULL,
    erp_effect        TEXT NOT NULL,  -- signed decimal, in unit
    mes_effect        TEXT NOT NULL,
    partition_key     TEXT NOT NULL,  -- "YYYY-MM-DD-HH:00", UTC
    expected_cause    TEXT NOT NULL,  -- "none": no variance remains
    acceptable_causes TEXT NOT NULL,  -- JSON list, expected_cause first
    lacking_system    TEXT,           -- ERP | MES | NULL
    persistent        INTEGER NOT NULL,  -- ERP and MES still differ by mes_effect - erp_effect after the run
    detail            TEXT NOT NULL,
    PRIMARY KEY (run_id, fault_id, unit)
);
CREATE TABLE IF NOT EXISTS planned_events (
    run_id           TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    transaction_id   TEXT NOT NULL,
    timestamp        TEXT NOT NULL,
    partition_key    TEXT NOT NULL,
    source_system    TEXT NOT NULL,
    material_number  TEXT NOT NULL,
    material_type    TEXT NOT NULL,
    transaction_type TEXT NOT NULL,
    reason           TEXT NOT NULL,
    movement_type    TEXT,
    quantity         TEXT NOT NULL,
    unit             TEXT NOT NULL,
    location         TEXT NOT NULL,
    to_location      TEXT,
    erp_reference    TEXT NOT NULL,
    in_erp           INTEGER NOT NULL,
    in_mes           TEXT NOT NULL,   -- sync | backflush | none
    delivery         TEXT NOT NULL,   -- outbox | mes_publisher | tap_only | not_sent | outbox_twice | ...
    copies_published INTEGER NOT NULL,
    sent_unit        TEXT,
    sent_quantity    TEXT,            -- as the message carried it (a string for a malformed one)
    fault_id         TEXT,
    PRIMARY KEY (run_id, transaction_id)
);
"""
FAULT_COLUMNS = ["run_id", "fault_id", "fault_type", "transaction_ids", "material_number", "material_type",
                 "location", "unit", "erp_effect", "mes_effect", "partition_key", "expected_cause",
                 "acceptable_causes", "lacking_system", "persistent", "detail"]  # fmt: skip
COMPARE_COLUMNS = ["material_number", "location", "unit", "erp_quantity", "mes_quantity", "difference",
                   "fault_touched", "expected_difference", "matches_ground_truth"]  # fmt: skip


def truth_path(settings: Settings) -> Path:
    return settings.home / "simulation.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.executescript(_SCHEMA)
    return db


def _now() -> str:
    return instant_text(datetime.now(UTC))


def record_plan(settings: Settings, sim: Simulation) -> Path:
    """Write the run, its faults and its events before anything happens, so a failed run keeps its truth."""
    path = truth_path(settings)
    copies = {i: 0 for i in range(len(sim.events))}
    for action in sim.actions:
        if action.kind.startswith("publish") and action.event is not None:
            copies[action.event] += 1
    with closing(_connect(path)) as db, db:
        for table in ("injected_faults", "planned_events", "simulation_runs"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (sim.run_id,))
        db.execute(
            "INSERT INTO simulation_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL, ?)",
            (sim.run_id, sim.seed, instant_text(sim.start), sim.hours, sim.plant.size,
             sim.profile.name, json.dumps(sim.profile.counts), _now(), len(sim.events),
             len({f.fault_id for f in sim.faults}), settings.namespace),
        )  # fmt: skip
        db.executemany(
            f"INSERT INTO injected_faults VALUES ({', '.join('?' * len(FAULT_COLUMNS))})",
            [(sim.run_id, f.fault_id, f.fault_type, json.dumps(f.transaction_ids), f.material_number,
              f.material_type, f.location, f.unit, format(f.erp_effect, "f"), format(f.mes_effect, "f"),
              f.partition_key, f.expected_cause, json.dumps(f.acceptable_causes), f.lacking_system,
              int(f.persistent), f.detail) for f in sim.faults],
        )  # fmt: skip
        rows = []
        for seq, planned in enumerate(sim.events):
            e, sent = planned.event, planned.sent
            sent_quantity = format(sent.quantity, "f") if sent else None
            if planned.sent_body is not None:
                sent_quantity = json.loads(planned.sent_body)["quantity"]
            rows.append((sim.run_id, seq, e.transaction_id, instant_text(e.timestamp),
                         e.timestamp.strftime("%Y-%m-%d-%H:00"), e.source_system, e.material_number,
                         e.material_type, e.transaction_type, e.reason, e.movement_type, format(e.quantity, "f"),
                         e.unit, e.location, e.to_location, e.erp_reference, int(planned.in_erp), planned.in_mes,
                         planned.delivery, copies[seq] + (planned.delivery == "mes_publisher"),
                         sent.unit if sent else None, sent_quantity, planned.fault_id))  # fmt: skip
        db.executemany(f"INSERT INTO planned_events VALUES ({', '.join('?' * 23)})", rows)
    return path


def record_finished(settings: Settings, run_id: str, published: int) -> None:
    with closing(_connect(truth_path(settings))) as db, db:
        db.execute("UPDATE simulation_runs SET finished_at = ?, published = ? WHERE run_id = ?",
                   (_now(), published, run_id))  # fmt: skip


def ground_truth(settings: Settings, run_id: str | None = None) -> pd.DataFrame:
    """Every injected fault (of every run in this home, or of ``run_id``), one row per
    (fault, unit): transaction_ids as lists, erp_effect/mes_effect as Decimal."""
    path = truth_path(settings)
    if not path.exists():
        return pd.DataFrame(columns=FAULT_COLUMNS)
    with closing(_connect(path)) as db:
        query = f"SELECT {', '.join(FAULT_COLUMNS)} FROM injected_faults"
        params: tuple[Any, ...] = ()
        if run_id is not None:
            query, params = query + " WHERE run_id = ?", (run_id,)
        rows = db.execute(query + " ORDER BY run_id, partition_key, fault_id, unit", params).fetchall()
    frame = pd.DataFrame(rows, columns=FAULT_COLUMNS, dtype=object)
    for column in ("transaction_ids", "acceptable_causes"):
        frame[column] = frame[column].map(json.loads)
    for column in ("erp_effect", "mes_effect"):
        frame[column] = frame[column].map(Decimal)
    frame["persistent"] = frame["persistent"].astype(bool)
    return frame


def planned_events(settings: Settings, run_id: str | None = None) -> pd.DataFrame:
    """The ``planned_events`` table as a DataFrame (quantities as text, exactly as stored)."""
    path = truth_path(settings)
    with closing(_connect(path)) as db:
        where, params = (" WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        return pd.read_sql_query(f"SELECT * FROM planned_events{where} ORDER BY run_id, seq", db, params=params)


def _plain(q: Decimal) -> Decimal:
    """Without trailing zeros and never in exponent notation (7500, not 7.5E+3), so tables read well."""
    n = q.normalize()
    return n.quantize(Decimal(1)) if n.as_tuple().exponent > 0 else n


def compare_stock(
    erp: ErpDatabase, mes_client: ReferenceMesClient, as_of: datetime | None = None, faults: pd.DataFrame | None = None
) -> pd.DataFrame:
    """ERP and MES stock side by side per material x location x unit, as of ``as_of`` (None: now).

    ``difference`` is MES minus ERP. With ``faults`` (``ground_truth(settings)``), ``fault_touched``
    says whether an injected fault touched the material-location, ``expected_difference`` is what
    the faults should have left there, and ``matches_ground_truth`` whether that is what is seen."""
    key = ["material_number", "location", "unit"]
    erp_rows = erp.stock_as_of(as_of, include_zero=True)
    erp_side = {(r.material, r.location, r.unit): r.quantity for r in erp_rows.itertuples()}
    mes_side: dict[tuple[str, str, str], Decimal] = {}
    for row in mes_client.stock(as_of=as_of):
        mes_side[(row.material_number, row.location, row.unit)] = row.quantity
    expected: dict[tuple[str, str, str], Decimal] = {}
    touched: set[tuple[str, str]] = set()
    if faults is not None:
        for f in faults.itertuples():
            touched.add((f.material_number, f.location))
            k = (f.material_number, f.location, f.unit)
            expected[k] = expected.get(k, Decimal(0)) + f.mes_effect - f.erp_effect
    rows = []
    for k in sorted(set(erp_side) | set(mes_side) | set(expected)):
        erp_q, mes_q = _plain(erp_side.get(k, Decimal(0))), _plain(mes_side.get(k, Decimal(0)))
        want, difference = _plain(expected.get(k, Decimal(0))), _plain(mes_q - erp_q)
        rows.append((*k, erp_q, mes_q, difference, (k[0], k[1]) in touched, want, difference == want))
    frame = pd.DataFrame(rows, columns=COMPARE_COLUMNS, dtype=object)
    for column in ("fault_touched", "matches_ground_truth"):
        frame[column] = frame[column].astype(bool)
    return frame.sort_values(key, ignore_index=True)
