"""The review queue: supervisors list, inspect, approve or reject held corrections.

Before an approval is carried out, the correction is checked again against what the systems say
now: a variance can resolve itself while it waits (the late movement arrives, a count is booked).
Then the approval is refused with that reason and the item is closed as `resolved`, so a
movement never lands twice. The hourly run closes such items too (``close_resolved``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pandas as pd

from invsync_pipeline.recon.corrections import MISSING_MOVEMENT_CAUSES, Correction, ReviewError, apply_correction, audit
from invsync_pipeline.recon.systems_now import arrived_in, balances_now
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.systems import Systems

HELD = "held_for_review"
_AGREE = Decimal("0.000001")


def held(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return conn.execute(
        """SELECT correction_id, partition_hour, material_number, location, unit, cause, method, target_system,
                  quantity, pct_of_balance, value, critical, note
           FROM recon.corrections WHERE status = ? ORDER BY partition_hour, correction_id""",
        [HELD],
    ).df()


def show(conn: duckdb.DuckDBPyConnection, cid: str) -> dict:
    cur = conn.execute("SELECT * FROM recon.corrections WHERE correction_id = ?", [cid])
    row = cur.fetchone()
    if row is None:
        raise ReviewError(f"no correction {cid!r}; `invsync review list` shows the ones waiting")
    out = dict(zip([d[0] for d in cur.description], row, strict=True))
    out["audit"] = conn.execute(
        "SELECT logged_at, action, actor, note FROM recon.correction_audit_log WHERE correction_id = ? ORDER BY 1",
        [cid],
    ).fetchall()
    return out


def _actor(name: str) -> str:
    if not name or not name.strip():
        raise ReviewError("--by must name the supervisor who decides (e.g. --by 'J. Smith')")
    return f"supervisor:{name.strip()}"


def _held_row(conn: duckdb.DuckDBPyConnection, cid: str) -> dict:
    row = show(conn, cid)
    if row["status"] != HELD:
        raise ReviewError(f"correction {cid} is {row['status']}, not waiting for review; nothing changed")
    return row


def _correction(row: dict, status: str, decided_by: str, note: str | None) -> Correction:
    return Correction(
        correction_id=row["correction_id"], partition_hour=row["partition_hour"],
        material_number=row["material_number"], material_type=row["material_type"], location=row["location"],
        unit=row["unit"], cause=row["cause"], target_system=row["target_system"],
        quantity=Decimal(str(row["quantity"])), truth=row["truth"], rule=row["rule"],
        pct_of_balance=row["pct_of_balance"], value=row["value"], critical=row["critical"], status=status,
        decided_by=decided_by, before_quantity=row["before_quantity"], explained_by=tuple(row["explained_by"]),
        note=note, method=row.get("method") or "adjust",
    )  # fmt: skip


@dataclass(frozen=True)
class Recheck:
    """What the systems say now about a held correction: has its variance resolved itself?"""

    resolved: bool
    reason: str


def recheck(systems: Systems, row: dict) -> Recheck:
    """Resolved when every movement the correction names has since reached the system that
    lacked it, or when both systems now hold the same stock of the material-location."""
    c = _correction(row, row["status"], row["decided_by"], row["note"])
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
    settings: Settings,
    conn: duckdb.DuckDBPyConnection,
    systems: Systems,
    cid: str,
    by: str,
    note: str | None,
    effective_at: datetime,
) -> dict:
    """Apply a held correction as decided by a supervisor, and record who and when. Refused, and
    the item closed as `resolved`, when its variance has resolved itself meanwhile."""
    actor = _actor(by)
    row = _held_row(conn, cid)
    check = recheck(systems, row)
    if check.resolved:
        _decide(conn, cid, "resolved", actor, f"approval refused: {check.reason}")
        raise ReviewError(f"approval of {cid} refused: {check.reason}. Nothing was posted; the item is closed "
                          "as resolved in the audit trail")  # fmt: skip
    correction = _correction(row, "approved", actor, note)
    if correction.method == "count":
        # The supervisor counted and stands by the rule's side: the difference is adjusted.
        correction = replace(correction, method="adjust")
    events = apply_correction(settings, conn, systems, correction, effective_at)  # raises before anything is recorded
    if correction.method == "resend" and events:
        effective_at = min(e.timestamp for e in events)  # the movements take effect at their own time
    after = row["before_quantity"] + correction.quantity if row["before_quantity"] is not None else None
    conn.execute("BEGIN TRANSACTION")
    conn.execute(
        """UPDATE recon.corrections SET status = 'approved', decided_by = ?, decided_at = ?, after_quantity = ?,
                  effective_at = ?, note = coalesce(?, note), method = ? WHERE correction_id = ?""",
        [actor, datetime.now(UTC), after, effective_at, note, correction.method, cid],
    )
    audit(conn, cid, "approved", actor, f"{note + '; ' if note else ''}checked first: {check.reason}")
    conn.execute("COMMIT")
    return show(conn, cid)


def reject(conn: duckdb.DuckDBPyConnection, cid: str, by: str, note: str | None) -> dict:
    """Close a held correction without changing either system; a reason is required."""
    actor = _actor(by)
    if not note or not note.strip():
        raise ReviewError("--note must say why the correction is rejected (it goes into the audit log)")
    _held_row(conn, cid)
    _decide(conn, cid, "rejected", actor, note)
    return show(conn, cid)


def close_resolved(conn: duckdb.DuckDBPyConnection, systems: Systems, actor: str) -> list[tuple[str, str]]:
    """Close every held item whose variance has resolved itself; (correction_id, reason) of each."""
    closed = []
    for cid in conn.execute(
        "SELECT correction_id FROM recon.corrections WHERE status = ? ORDER BY partition_hour, correction_id", [HELD]
    ).fetchall():
        row = show(conn, cid[0])
        check = recheck(systems, row)
        if check.resolved:
            _decide(conn, cid[0], "resolved", actor, check.reason)
            closed.append((cid[0], check.reason))
    return closed


def _decide(conn: duckdb.DuckDBPyConnection, cid: str, status: str, actor: str, note: str) -> None:
    """Close a held correction without posting anything (rejected, or resolved), with the audit row."""
    conn.execute("BEGIN TRANSACTION")
    conn.execute(
        "UPDATE recon.corrections SET status = ?, decided_by = ?, decided_at = ?, note = ? WHERE correction_id = ?",
        [status, actor, datetime.now(UTC), note, cid],
    )
    audit(conn, cid, status, actor, note)
    conn.execute("COMMIT")
