"""Deciding and applying corrections by the source-of-truth rules, with the audit trail.

A correction is an adjustment (reason `correction`, source_system RECON, target_system = the
system that is wrong) published through the same exchange as every movement, so it is synced,
staged, reconciled and audited like any other. Corrections for the ERP are also posted in the
ERP tables (701/702) by the ERP adapter in ``sources/``; the MES gets its own through the sync
worker. Timing differences are never corrected; critical ones wait for a supervisor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import duckdb

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.recon.alerts import raise_alert
from invsync_pipeline.recon.rules import Rules
from invsync_pipeline.settings import Settings
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


def correction_id(hour: datetime, material: str, location: str, unit: str, cause: str, tx_ids: list[str]) -> str:
    key = "|".join([hour.isoformat(), material, location, unit, cause, *sorted(tx_ids)])
    return "RECON-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def decide(conn: duckdb.DuckDBPyConnection, hour: datetime, rules: Rules) -> list[Correction]:
    """The corrections the rules call for in this hour, not yet decided before."""
    existing = {row[0] for row in conn.execute("SELECT correction_id FROM recon.corrections").fetchall()}
    candidates = conn.execute(sql("recon/correction_candidates"), {"partition_hour": hour}).df()
    decided = []
    for row in candidates.itertuples(index=False):
        tx_ids = list(row.transaction_ids)
        cid = correction_id(hour, row.material_number, row.location, row.unit, row.cause, tx_ids)
        if cid in existing:
            continue  # nothing is corrected twice
        reason = row.reason if isinstance(row.reason, str) else None
        rule = rules.truth_for(reason)
        missing = row.system  # the system whose books miss the movement
        other = "ERP" if missing == "MES" else "MES"
        q = Decimal(str(row.explained_quantity))
        if rule.truth == other:
            target, quantity = missing, q  # the system missing the movement gets it
        else:
            target, quantity = other, -q  # the missing system is right: undo it in the other one
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
        review = critical or row.cause in rules.always_review
        if row.cause in rules.always_review:
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
            )  # fmt: skip
        )
    return decided


def correction_event(c: Correction, effective_at: datetime) -> InventoryEvent:
    """The RECON adjustment that carries a correction (701 gain / 702 loss)."""
    return parse_event(
        {
            "schema_version": "1",
            "transaction_id": c.correction_id,
            "timestamp": effective_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
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


def apply_correction(settings: Settings, c: Correction, effective_at: datetime) -> InventoryEvent:
    """Publish the correction (and post it in the ERP when the ERP is the target)."""
    return apply_corrections(settings, [(c, effective_at)])[0]


def apply_corrections(settings: Settings, corrections: list[tuple[Correction, datetime]]) -> list[InventoryEvent]:
    """Publish an hour's corrections together (posting those for the ERP there first): one ERP
    connection and one outbox flush, not one per correction, which a backfill of weeks feels."""
    from invsync_pipeline.messaging.outbox import Outbox

    events = [correction_event(c, effective_at) for c, effective_at in corrections]
    for_erp = [e for (c, _), e in zip(corrections, events, strict=True) if c.target_system == "ERP"]
    if for_erp:
        from invsync_pipeline.sources.erp import ErpDatabase

        erp = ErpDatabase.from_settings(settings)
        try:
            for event in for_erp:
                erp.post(event)  # idempotent by transaction_id
        finally:
            erp.dispose()
    if events:
        with Outbox(settings) as box:
            box.publish(events)  # buffered durably if the broker is away
    return events


def record(conn: duckdb.DuckDBPyConnection, c: Correction, effective_at: datetime | None) -> None:
    now = datetime.now(UTC)
    after = c.before_quantity + c.quantity if c.before_quantity is not None and c.status == "applied" else None
    conn.execute(
        "INSERT INTO recon.corrections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [c.correction_id, c.partition_hour, c.material_number, c.material_type, c.location, c.unit, c.cause,
         c.target_system, c.quantity, c.truth, c.rule, c.pct_of_balance, c.value, c.critical, c.status,
         c.decided_by, now, c.before_quantity, after, list(c.explained_by), effective_at, c.note],
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
    message = (f"hour {c.partition_hour:%Y-%m-%d %H:00} UTC; {c.note}; explained by {explained}. "
               f"Review with `invsync review show {c.correction_id}`.")  # fmt: skip
    raise_alert(settings, f"review:{c.correction_id}", "critical" if c.critical else "warning", "correction_review",
                subject, message)  # fmt: skip


def effective_time(hour_end: datetime, policy: str) -> datetime:
    """When a correction takes effect: now (live), or the start of the next hour (replaying
    past hours as if live, as the demo and the tests do)."""
    return hour_end if policy == "next_hour_start" else datetime.now(UTC)
