"""Deciding and applying corrections by the source-of-truth rules, with the audit trail.

A correction never lets a movement's effect land twice, however late the movement comes:

- ``resend``: the system that lacks the movements gets the movements themselves, re-sent under
  their own transaction_ids (from the ledger, the ERP document or the MES log). A late original
  is then a duplicate that idempotency refuses. Used when the rules say the system that has them
  is right.
- ``adjust``: an adjustment (reason `correction`, source_system RECON, target_system = the system
  that is wrong) published through the same exchange as every movement, so it is synced, staged,
  reconciled and audited like any other. The movements it compensates are registered first
  (``ops/compensations.py``), so a late original is refused as compensated. Used when the rules say
  the system that lacks them is right (the other's booking is undone), when the MES refused the
  movement itself (dead_lettered), and for unit mismatches.
- ``count``: nothing explains the difference on either side; a physical count is requested and
  nothing is posted (``without_movement`` in the rules file).

Corrections for the ERP are also posted in the ERP tables by the ERP adapter in ``sources/``; the
MES gets its own through the sync worker. Timing differences (in flight, queued, retrying, late)
are never corrected; critical ones wait for a supervisor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import duckdb
import pandas as pd

from invsync_pipeline.contract import NO_HORIZON, InventoryEvent, instant_text, parse_event
from invsync_pipeline.ops.alerts import raise_alert
from invsync_pipeline.recon.rules import Rules
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.systems import Systems
from invsync_pipeline.warehouse import sql


class ReviewError(ValueError):
    """A review command cannot be carried out; nothing was changed."""


@dataclass(frozen=True)
class Correction:
    correction_id: str
    partition_hour: datetime
    material_number: str
    material_type: str | None
    location: str
    unit: str
    cause: str
    target_system: str
    quantity: Decimal
    truth: str
    rule: str
    pct_of_balance: Decimal | None
    value: Decimal | None
    critical: bool
    status: str
    decided_by: str
    before_quantity: Decimal | None
    explained_by: tuple[str, ...]
    note: str | None
    method: str = "adjust"  # resend | adjust | count (module docstring)

    @property
    def lacking_system(self) -> str:
        """The system whose books missed the movements the correction is about."""
        return self.target_system if self.method == "resend" else self.truth


def correction_id(hour: datetime, material: str, location: str, unit: str, cause: str, tx_ids: list[str]) -> str:
    key = "|".join([hour.isoformat(), material, location, unit, cause, *sorted(tx_ids)])
    return "RECON-" + hashlib.sha256(key.encode()).hexdigest()[:24]


# Causes about a movement one system lacks: a correction of them names, and compensates, those movements.
MISSING_MOVEMENT_CAUSES = ("not_published", "missing_in_mes", "missing_in_erp", "quarantined", "dead_lettered")


def correction_candidates(conn: duckdb.DuckDBPyConnection, first: datetime, last: datetime) -> pd.DataFrame:
    """The findings of the hours ``first``..``last`` a correction could fix, with what the rules
    need (sql/recon/correction_candidates.sql); one statement for a chunk of hours."""
    # The tables are read only back to the widest in-flight window of these hours plus a day, and
    # two hours ahead (each hour keeps to its own window in the SQL). Reading every hour's
    # movements instead cost 3 s an hour at 3 weeks of a busy plant.
    (window,) = conn.execute(
        """SELECT coalesce(max(in_flight_window_minutes), 0) FROM recon.investigation_inputs
           WHERE partition_hour BETWEEN ? AND ?""",
        [first, last],
    ).fetchone()
    params = {"first_hour": first, "last_hour": last, "seen_from": first - timedelta(days=1, minutes=window),
              "seen_to": last + timedelta(hours=2)}  # fmt: skip
    return conn.execute(sql("recon/correction_candidates"), params).df()


def decide(
    conn: duckdb.DuckDBPyConnection, hour: datetime, rules: Rules, candidates: pd.DataFrame | None = None
) -> list[Correction]:
    """The corrections the rules call for in this hour, not yet decided before. A finding whose
    movements an earlier correction already names (applied, approved or held) is not decided again:
    each movement is corrected once. ``candidates``: ``correction_candidates`` of a chunk of hours
    holding this one (read for this hour alone when not given)."""
    existing = {row[0] for row in conn.execute("SELECT correction_id FROM recon.corrections").fetchall()}
    named = {
        (tx, m, loc, unit)
        for tx, m, loc, unit in conn.execute(
            """SELECT t.tx, material_number, location, unit
               FROM recon.corrections, unnest(explained_by) AS t(tx)
               WHERE status IN ('applied', 'approved', 'held_for_review')"""
        ).fetchall()
    }
    if candidates is None:
        candidates = correction_candidates(conn, hour, hour)
    candidates = candidates[candidates["partition_hour"] == hour]
    decided = []
    for row in candidates.itertuples(index=False):
        tx_ids = list(row.transaction_ids)
        cid = correction_id(hour, row.material_number, row.location, row.unit, row.cause, tx_ids)
        if cid in existing:
            continue  # nothing is corrected twice
        if tx_ids and all((tx, row.material_number, row.location, row.unit) in named for tx in tx_ids):
            continue  # these movements were corrected (or wait for a supervisor) already
        reason = row.reason if isinstance(row.reason, str) else None
        rule = rules.truth_for(reason)
        missing = row.system  # the system whose books miss the movement
        other = "ERP" if missing == "MES" else "MES"
        q = Decimal(str(row.explained_quantity))
        if rule.truth == other:
            target, quantity = missing, q  # the system missing the movement gets it
        else:
            target, quantity = other, -q  # the missing system is right: undo it in the other one
        method = _method(row.cause, target == missing, bool(row.all_known), rules)
        erp_end, mes_end = Decimal(str(row.erp_end)), Decimal(str(row.mes_end))
        before = erp_end if target == "ERP" else mes_end
        base = max(abs(erp_end), abs(mes_end))
        pct = (abs(quantity) / base * 100).quantize(Decimal("0.0001")) if base else Decimal(100)
        cost = row.unit_cost if row.unit_cost == row.unit_cost and row.unit_cost is not None else None
        value = (abs(quantity) * Decimal(str(cost))).quantize(Decimal("0.01")) if cost is not None else None
        threshold = rules.threshold_for(row.material_type, row.abc_class)
        critical = pct > Decimal(str(threshold.critical_pct)) or (
            value is not None and value > Decimal(str(threshold.critical_value))
        )
        review = critical or row.cause in rules.always_review or method == "count"
        if method == "count":
            note = (f"no movement explains it on either side: count the stock of {row.material_number} at "
                    f"{row.location} (book it as a cycle count); nothing was posted")  # fmt: skip
        elif row.cause in rules.always_review:
            note = f"cause {row.cause} always waits for a person"
        elif critical:
            note = (f"critical: {pct}% of the balance (limit {threshold.critical_pct}%)"
                    + (f", value {value} (limit {threshold.critical_value})" if value is not None else ""))  # fmt: skip
        else:
            note = None
        decided.append(
            Correction(
                correction_id=cid,
                partition_hour=hour,
                material_number=row.material_number,
                material_type=row.material_type if isinstance(row.material_type, str) else None,
                location=row.location,
                unit=row.unit,
                cause=row.cause,
                target_system=target,
                quantity=quantity,
                truth=rule.truth,
                rule=rule.name,
                pct_of_balance=pct,
                value=value,
                critical=critical,
                status="held_for_review" if review else "applied",
                decided_by=f"auto:{rule.name}",
                before_quantity=before,
                explained_by=tuple(tx_ids),
                note=note,
                method=method,
            )  # fmt: skip
        )
    return decided


def _method(cause: str, target_lacks_them: bool, all_known: bool, rules: Rules) -> str:
    """How a finding is corrected (module docstring)."""
    if cause == "unexplained":
        return "count" if rules.without_movement == "request_count" else "adjust"
    if cause in MISSING_MOVEMENT_CAUSES and cause != "dead_lettered" and target_lacks_them and all_known:
        return "resend"  # the MES refused a dead-lettered movement itself: sending it again fails again
    return "adjust"


def correction_event(c: Correction, effective_at: datetime) -> InventoryEvent:
    """The RECON adjustment that carries a correction (701 gain / 702 loss)."""
    return parse_event(
        {
            "schema_version": "1",
            "transaction_id": c.correction_id,
            "timestamp": instant_text(effective_at),
            "source_system": "RECON",
            "target_system": c.target_system,
            "material_number": c.material_number,
            "material_type": c.material_type or "raw",
            "quantity": format(c.quantity, "f"),
            "unit": c.unit,
            "location": c.location,
            "transaction_type": "adjustment",
            "reason": "correction",
            "erp_reference": c.correction_id,
            "movement_type": "701" if c.quantity > 0 else "702",
        }
    )


def apply_correction(
    settings: Settings, conn: duckdb.DuckDBPyConnection, systems: Systems, c: Correction, effective_at: datetime
) -> list[InventoryEvent]:
    """Carry out one correction (see ``apply_corrections``); the events it published."""
    return apply_corrections(settings, conn, systems, [(c, effective_at)])


def apply_corrections(
    settings: Settings,
    conn: duckdb.DuckDBPyConnection,
    systems: Systems,
    corrections: list[tuple[Correction, datetime]],
) -> list[InventoryEvent]:
    """Carry out an hour's corrections together: one outbox flush, not one per correction, which
    a backfill of weeks feels. A re-send publishes the movements themselves (posting them in the
    ERP first when the ERP lacks them); an adjustment registers the movements it compensates,
    then posts and publishes the RECON event. Raises before anything is published when a
    re-sent movement cannot be found."""
    from invsync_pipeline.messaging.outbox import Outbox
    from invsync_pipeline.ops.compensations import register

    resend = [c for c, _ in corrections if c.method == "resend"]
    found = originals(conn, systems, {tx for c in resend for tx in c.explained_by})
    events: list[InventoryEvent] = []
    for_erp: list[InventoryEvent] = []
    for c, effective_at in corrections:
        if c.method == "count":
            continue  # a count is booked by the people who count, as a cycle count
        if c.method == "resend":
            lacking = [tx for tx in c.explained_by if tx not in found]
            if lacking:
                raise ReviewError(f"correction {c.correction_id}: cannot re-send {', '.join(lacking)}: found in "
                                  "neither the ledger, the ERP nor the MES")  # fmt: skip
            sent = [found[tx] for tx in c.explained_by]
        else:
            if c.cause in MISSING_MOVEMENT_CAUSES and c.explained_by:
                # Before it is published: a late original that arrives meanwhile is refused.
                register(settings, c.correction_id, c.lacking_system, c.explained_by)
            sent = [correction_event(c, effective_at)]
        events += sent
        if c.target_system == "ERP":
            for_erp += sent
    for event in for_erp:
        systems.erp.post(event)  # idempotent by transaction_id
    unique = list({e.transaction_id: e for e in events}.values())  # a transfer's two findings re-send it once
    if unique:
        with Outbox(settings) as box:
            box.publish(unique)  # buffered durably if the broker is away
    return unique


def originals(
    conn: duckdb.DuckDBPyConnection, systems: Systems, transaction_ids: set[str]
) -> dict[str, InventoryEvent]:
    """The movements themselves, as whole contract events: from the ledger (as published), else
    the ERP's documents, else the MES's applied log."""
    if not transaction_ids:
        return {}
    found = {e.transaction_id: e for e in ledger_events(conn, transaction_ids)}
    if missing := transaction_ids - found.keys():
        found.update(systems.erp.events(missing))
    for tx in sorted(transaction_ids - found.keys()):
        if (item := systems.mes.find_transaction(tx)) is not None:
            fields = {k: v for k, v in item.items() if k in InventoryEvent.model_fields}
            found[tx] = parse_event(fields, limits=NO_HORIZON)
    return found


def ledger_events(conn: duckdb.DuckDBPyConnection, transaction_ids: set[str]) -> list[InventoryEvent]:
    """Staged events by transaction id, rebuilt as they were published."""
    rows = conn.execute(
        """SELECT DISTINCT ON (transaction_id)
                  transaction_id, strftime(event_time, '%Y-%m-%dT%H:%M:%S.%fZ') AS timestamp, source_system,
                  target_system, material_number, material_type, CAST(quantity AS VARCHAR) AS quantity, unit,
                  location, to_location, transaction_type, reason, erp_reference, movement_type
           FROM staging.inventory_events WHERE list_contains(?, transaction_id)
           ORDER BY transaction_id, partition_hour""",
        [sorted(transaction_ids)],
    ).df()
    events = []
    for row in rows.to_dict("records"):
        body = {k: v for k, v in row.items() if isinstance(v, str)}  # None / NaN: an absent optional field
        events.append(parse_event({"schema_version": "1", **body}))
    return events


def record(conn: duckdb.DuckDBPyConnection, c: Correction, effective_at: datetime | None) -> None:
    now = datetime.now(UTC)
    after = c.before_quantity + c.quantity if c.before_quantity is not None and c.status == "applied" else None
    conn.execute(
        "INSERT INTO recon.corrections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [c.correction_id, c.partition_hour, c.material_number, c.material_type, c.location, c.unit, c.cause,
         c.target_system, c.quantity, c.truth, c.rule, c.pct_of_balance, c.value, c.critical, c.status,
         c.decided_by, now, c.before_quantity, after, list(c.explained_by), effective_at, c.note, c.method],
    )  # fmt: skip
    audit(conn, c.correction_id, "held" if c.status == "held_for_review" else "applied", c.decided_by, c.note)


def audit(conn: duckdb.DuckDBPyConnection, cid: str, action: str, actor: str, note: str | None) -> None:
    """Append one row to the audit log, copying the correction's facts as they are now."""
    conn.execute(
        """INSERT INTO recon.correction_audit_log
           SELECT now(), correction_id, ?, ?, partition_hour, material_number, location, unit, target_system,
                  quantity, rule, cause, before_quantity, after_quantity, explained_by, ?
           FROM recon.corrections WHERE correction_id = ?""",
        [action, actor, note, cid],
    )


def alert_held(settings: Settings, c: Correction) -> None:
    subject = (f"{c.material_number} at {c.location}: {c.target_system} off by {c.quantity} {c.unit} "
               f"({c.cause}) needs review")  # fmt: skip
    explained = ", ".join(c.explained_by) or "nothing"
    action = {"resend": "re-send these movements to the", "count": "count the stock; nothing posted in the"}.get(
        c.method, "adjust the"
    )
    link = f"{settings.review.base_url.rstrip('/')}/items/{c.correction_id}"
    message = (f"hour {c.partition_hour:%Y-%m-%d %H:00} UTC; {c.note}; explained by {explained}; proposed: "
               f"{action} {c.target_system}. Review it at {link} "
               f"(or `invsync review show {c.correction_id}`).")  # fmt: skip
    raise_alert(settings, f"review:{c.correction_id}", "critical" if c.critical else "warning", "correction_review",
                subject, message)  # fmt: skip


def effective_time(hour_end: datetime, policy: str) -> datetime:
    """When a correction takes effect: now (live), or the start of the next hour (replaying
    past hours as if live, as the demo and the tests do)."""
    return hour_end if policy == "next_hour_start" else datetime.now(UTC)
