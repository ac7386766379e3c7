"""The review queue: supervisors list, inspect, approve or reject held corrections."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pandas as pd

from invsync_pipeline.recon.corrections import Correction, ReviewError, apply_correction, audit
from invsync_pipeline.settings import Settings

HELD = "held_for_review"


def held(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return conn.execute(
        """SELECT correction_id, partition_hour, material_number, location, unit, cause, target_system, quantity,
                  pct_of_balance, value, critical, note
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


def approve(
    settings: Settings, conn: duckdb.DuckDBPyConnection, cid: str, by: str, note: str | None, effective_at: datetime
) -> dict:
    """Apply a held correction as decided by a supervisor, and record who and when."""
    actor = _actor(by)
    row = _held_row(conn, cid)
    correction = Correction(
        correction_id=cid, partition_hour=row["partition_hour"], material_number=row["material_number"],
        material_type=row["material_type"], location=row["location"], unit=row["unit"], cause=row["cause"],
        target_system=row["target_system"], quantity=Decimal(str(row["quantity"])), truth=row["truth"],
        rule=row["rule"], pct_of_balance=row["pct_of_balance"], value=row["value"], critical=row["critical"],
        status="approved", decided_by=actor, before_quantity=row["before_quantity"],
        explained_by=tuple(row["explained_by"]), note=note,
    )  # fmt: skip
    apply_correction(settings, correction, effective_at)  # raises before anything is recorded
    after = row["before_quantity"] + correction.quantity if row["before_quantity"] is not None else None
    conn.execute("BEGIN TRANSACTION")
    conn.execute(
        """UPDATE recon.corrections SET status = 'approved', decided_by = ?, decided_at = ?, after_quantity = ?,
                  effective_at = ?, note = coalesce(?, note) WHERE correction_id = ?""",
        [actor, datetime.now(UTC), after, effective_at, note, cid],
    )
    audit(conn, cid, "approved", actor, note)
    conn.execute("COMMIT")
    return show(conn, cid)


def reject(conn: duckdb.DuckDBPyConnection, cid: str, by: str, note: str | None) -> dict:
    """Close a held correction without changing either system; a reason is required."""
    actor = _actor(by)
    if not note or not note.strip():
        raise ReviewError("--note must say why the correction is rejected (it goes into the audit log)")
    _held_row(conn, cid)
    conn.execute("BEGIN TRANSACTION")
    conn.execute(
        "UPDATE recon.corrections SET status = 'rejected', decided_by = ?, decided_at = ?, note = ? "
        "WHERE correction_id = ?",
        [actor, datetime.now(UTC), note, cid],
    )
    audit(conn, cid, "rejected", actor, note)
    conn.execute("COMMIT")
    return show(conn, cid)
