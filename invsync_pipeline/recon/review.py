"""The review queue: supervisors list, inspect, approve or reject held corrections.

Supervisors work on the review store only (``recon/review_store.py``), never on DuckDB, so they
decide while a run writes. A decision is carried out by the next run that writes DuckDB
(``apply_decisions``), exactly once. Before it is carried out the correction is checked again
against what the systems say now: a variance can resolve itself while it waits (the late
movement arrives, a count is booked); then it is not applied and the item is closed as
`resolved`, so a movement never lands twice. The hourly run closes held items that resolved
themselves too (``close_resolved``), and copies every decision into DuckDB for analysts
(``copy_to_warehouse``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import duckdb
import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from invsync_pipeline.recon.corrections import MISSING_MOVEMENT_CAUSES, Correction, ReviewError, apply_correction, audit
from invsync_pipeline.recon.review_store import HELD, ReviewStore
from invsync_pipeline.recon.systems_now import arrived_in, balances_now
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import MesError
from invsync_pipeline.sources.systems import Systems

_AGREE = Decimal("0.000001")
LISTED = ["correction_id", "partition_hour", "material_number", "location", "unit", "cause", "method",
          "target_system", "quantity", "pct_of_balance", "value", "critical", "note"]  # fmt: skip


def held(store: ReviewStore, **filters: object) -> pd.DataFrame:
    """What waits for a supervisor, oldest hour first (filters: ``ReviewStore.queue``)."""
    return pd.DataFrame(store.queue(HELD, **filters), columns=LISTED)[LISTED]


def show(store: ReviewStore, cid: str) -> dict:
    """One item with its audit trail (logged_at, action, actor, note)."""
    out = store.item(cid)
    out["audit"] = [(a["logged_at"], a["action"], a["actor"], a["note"]) for a in store.trail(cid)]
    return out


def actor(name: str | None) -> str:
    """``supervisor:<name>``; a decision without a name is refused."""
    if not name or not name.strip():
        raise ReviewError("--by must name the supervisor who decides (e.g. --by 'J. Smith')")
    return f"supervisor:{name.strip()}"


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def as_correction(item: dict) -> Correction:
    """A review store item as the Correction the rules decided."""
    return Correction(
        correction_id=item["correction_id"], partition_hour=datetime.fromisoformat(item["partition_hour"]),
        material_number=item["material_number"], material_type=item["material_type"], location=item["location"],
        unit=item["unit"], cause=item["cause"], target_system=item["target_system"],
        quantity=Decimal(item["quantity"]), truth=item["truth"], rule=item["rule"],
        pct_of_balance=_decimal(item["pct_of_balance"]), value=_decimal(item["value"]), critical=item["critical"],
        status=item["status"], decided_by=item["decided_by"] or item["held_by"],
        before_quantity=_decimal(item["before_quantity"]), explained_by=tuple(item["explained_by"]),
        note=item["decision_note"] or item["note"], method=item["method"],
    )  # fmt: skip


@dataclass(frozen=True)
class Recheck:
    """What the systems say now about a held correction: has its variance resolved itself?"""

    resolved: bool
    reason: str


def recheck(systems: Systems, item: dict) -> Recheck:
    """Resolved when every movement the correction names has since reached the system that
    lacked it, or when both systems now hold the same stock of the material-location."""
    c = as_correction(item)
    named = list(c.explained_by)
    arrived: set[str] = set()
    if named and c.cause in MISSING_MOVEMENT_CAUSES:
        arrived = arrived_in(systems, c.lacking_system, named)
        if len(arrived) == len(named):
            return Recheck(True, f"every movement it names has reached the {c.lacking_system} since "
                                 f"({', '.join(named)})")  # fmt: skip
    erp_now, mes_now = balances_now(systems, c.material_number, c.location, c.unit)
    if abs(erp_now - mes_now) <= _AGREE:
        return Recheck(True, f"the systems agree now: ERP and MES both hold {erp_now.normalize()} {c.unit}")
    still = f"; {len(arrived)} of {len(named)} named movements arrived" if named else ""
    return Recheck(False, f"still off now: ERP {erp_now.normalize()}, MES {mes_now.normalize()} {c.unit}{still}")


def approve(
    store: ReviewStore, cid: str, by: str, note: str | None, effective: str = "now", systems: Systems | None = None
) -> dict:
    """Record a supervisor's approval; the next run carries it out. With ``systems`` the
    correction is checked first, and an approval of a variance that resolved itself is refused
    at once (the item closed as `resolved`); the run checks again before it applies anything."""
    who = actor(by)
    item = store.item(cid)
    if item["status"] == HELD and systems is not None:
        try:
            check = recheck(systems, item)
        except (ConnectionError, OSError, MesError, SQLAlchemyError):
            check = Recheck(False, "not checked now (a system is out of reach); the run checks it")
        if check.resolved and store.close(cid, who, f"approval refused: {check.reason}"):
            raise ReviewError(f"approval of {cid} refused: {check.reason}. Nothing was posted; the item is closed "
                              "as resolved in the audit trail")  # fmt: skip
    return store.decide(cid, "approved", who, note, effective)


def reject(store: ReviewStore, cid: str, by: str, note: str | None) -> dict:
    """Close a held correction without changing either system; a reason is required."""
    who = actor(by)
    if not note or not note.strip():
        raise ReviewError("--note must say why the correction is rejected (it goes into the audit log)")
    store.item(cid)  # an unknown id says so before anything else
    return store.decide(cid, "rejected", who, note.strip())


def close_resolved(store: ReviewStore, systems: Systems, who: str) -> list[tuple[str, str]]:
    """Close every held item whose variance has resolved itself; (correction_id, reason) of each."""
    closed = []
    for item in store.queue(HELD):
        check = recheck(systems, item)
        if check.resolved and store.close(item["correction_id"], who, check.reason):
            closed.append((item["correction_id"], check.reason))
    return closed


def apply_decisions(
    settings: Settings, conn: duckdb.DuckDBPyConnection, store: ReviewStore, systems: Systems, who: str
) -> list[tuple[str, str]]:
    """Carry out the approvals not applied yet, each once; (correction_id, outcome) of each.
    Runs inside a DuckDB-writing run, which holds the one writer lock: originals are read from
    the ledger there. Publishing is idempotent by transaction_id, and the store records the
    application only if no other run did, so a crash in between never applies one twice."""
    outcomes = []
    for item in store.pending():
        cid, by = item["correction_id"], item["decided_by"]
        check = recheck(systems, item)
        if check.resolved:
            store.close(cid, who, f"approval by {by} not carried out: {check.reason}", pending_approval=True)
            outcomes.append((cid, f"resolved: {check.reason}"))
            continue
        correction = as_correction(item)
        if correction.method == "count":
            # The supervisor counted and stands by the rule's side: the difference is adjusted.
            correction = replace(correction, method="adjust")
        hour = datetime.fromisoformat(item["partition_hour"])
        when = hour + timedelta(hours=1) if item["effective"] == "next-hour" else datetime.now(UTC)
        try:
            events = apply_correction(settings, conn, systems, correction, when)
        except ReviewError as exc:  # e.g. a movement to re-send is nowhere to be found: stays pending
            outcomes.append((cid, f"not applied: {exc}"))
            continue
        if correction.method == "resend" and events:
            when = min(e.timestamp for e in events)  # the movements take effect at their own time
        before = correction.before_quantity
        after = before + correction.quantity if before is not None else None
        note = f"approved by {by}; checked first: {check.reason}"
        if store.mark_applied(cid, who, note, when, after, correction.method):
            outcomes.append((cid, f"applied: {note}"))
    return outcomes


def adopt_held(conn: duckdb.DuckDBPyConnection, store: ReviewStore, recent_hours: int) -> int:
    """Put items held in DuckDB but missing from the review store into it, with their evidence:
    the ones held before the store existed (an upgrade), so supervisors see every held item."""
    from invsync_pipeline.recon.evidence import evidence

    cur = conn.execute("SELECT * FROM recon.corrections WHERE status = ? ORDER BY partition_hour", [HELD])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    # Evidence only for the missing ones: every run calls this, and the held items of a plant's
    # history grow; gathering evidence for each of them every run cost seconds per run.
    known = store.known([row["correction_id"] for row in rows])
    adopted = 0
    for row in rows:
        if row["correction_id"] in known:
            continue
        c = Correction(**{k: row[k] for k in Correction.__dataclass_fields__ if k != "explained_by"},
                       explained_by=tuple(row["explained_by"]))  # fmt: skip
        c = replace(c, quantity=Decimal(str(c.quantity)), method=c.method or "adjust")
        adopted += store.hold(c, evidence(conn, c, recent_hours))
    return adopted


def copy_to_warehouse(conn: duckdb.DuckDBPyConnection, store: ReviewStore) -> int:
    """Copy the decisions and the audit rows added in the store since the last copy into
    ``recon.corrections`` and ``recon.correction_audit_log``, where analysts query them. The
    `held` rows are there already (the run that held them wrote both); a pending approval shows
    as held_for_review until a run applies it. Returns the audit rows copied."""
    (last,) = conn.execute("SELECT coalesce(max(last_audit_id), 0) FROM recon.review_copies").fetchone()
    rows = store.trail_since(last)
    if not rows:
        return 0
    copied = [r for r in rows if r["action"] != "held"]
    conn.execute("BEGIN TRANSACTION")
    for cid in dict.fromkeys(r["correction_id"] for r in copied):
        item = store.item(cid)
        if item["status"] == "approved" and item["applied_at"] is None:
            continue
        conn.execute(
            """UPDATE recon.corrections SET status = ?, decided_by = ?, decided_at = ?, after_quantity = ?,
                      effective_at = ?, note = coalesce(?, note), method = ? WHERE correction_id = ?""",
            [item["status"], item["decided_by"], item["decided_at"], item["after_quantity"], item["effective_at"],
             item["decision_note"], item["method"], cid],
        )  # fmt: skip
    for r in copied:
        audit(conn, r["correction_id"], r["action"], r["actor"], r["note"])
    conn.execute("INSERT INTO recon.review_copies VALUES (?, now())", [rows[-1]["audit_id"]])
    conn.execute("COMMIT")
    return len(copied)
