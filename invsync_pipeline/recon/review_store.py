"""The review store: held corrections with their evidence, supervisors' decisions and their audit trail.

It lives outside DuckDB on purpose (SQLite by default, PostgreSQL for a plant, by the URL in
``settings.ops_url``): a supervisor lists, inspects and decides while a run holds DuckDB's one
writer lock. Runs write held items here and carry out the decisions; each decision is taken once
and applied once, by conditional updates whose row count says who won (``decide``,
``mark_applied``), which holds on SQLite's one writer and on PostgreSQL's row locks alike.

Decimals are kept as text and instants as ISO 8601 UTC text, so both databases give back
exactly what was written and instants sort as text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from invsync_pipeline.ops.database import ops_engine, with_project_driver
from invsync_pipeline.recon.corrections import Correction, ReviewError
from invsync_pipeline.settings import Settings

HELD = "held_for_review"
DECISIONS = ("approved", "rejected")
_EFFECTIVE = ("now", "next-hour")


def iso(value: datetime) -> str:
    """An instant as the store writes it: UTC, microseconds, so text order is time order."""
    if value.tzinfo is None:
        raise ValueError(f"instant={value.isoformat()}: give a timezone-aware datetime (e.g. tzinfo=UTC)")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _tables(schema: str | None) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    meta = sa.MetaData(schema=schema)
    text = sa.String(255)
    items = sa.Table(
        "review_items", meta,
        sa.Column("correction_id", sa.String(64), primary_key=True),
        sa.Column("partition_hour", text, nullable=False),
        sa.Column("material_number", text, nullable=False),
        sa.Column("material_type", text),
        sa.Column("location", text, nullable=False),
        sa.Column("plant", text, nullable=False),  # the warehouse part of the location
        sa.Column("unit", text, nullable=False),
        sa.Column("cause", text, nullable=False),
        sa.Column("method", text, nullable=False),
        sa.Column("target_system", text, nullable=False),
        sa.Column("truth", text, nullable=False),
        sa.Column("rule", text, nullable=False),
        sa.Column("quantity", text, nullable=False),
        sa.Column("pct_of_balance", text),
        sa.Column("value", text),
        sa.Column("critical", sa.Boolean, nullable=False),
        sa.Column("before_quantity", text),
        sa.Column("explained_by", sa.Text, nullable=False),  # JSON list of transaction_ids
        sa.Column("note", sa.Text),
        sa.Column("held_by", text, nullable=False),
        sa.Column("held_at", text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),  # JSON, captured by the run that held it
        # held_for_review -> approved | rejected | resolved; an approval is then applied once.
        sa.Column("status", text, nullable=False),
        sa.Column("decided_by", text),
        sa.Column("decided_at", text),
        sa.Column("decision_note", sa.Text),
        sa.Column("effective", text),  # now | next-hour: when an approved correction takes effect
        sa.Column("applied_at", text),
        sa.Column("effective_at", text),
        sa.Column("after_quantity", text),
    )  # fmt: skip
    sa.Index("review_items_status", items.c.status, items.c.held_at)
    audit = sa.Table(
        "review_audit", meta,
        sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("logged_at", text, nullable=False),
        sa.Column("correction_id", sa.String(64), nullable=False, index=True),
        sa.Column("action", text, nullable=False),  # held | approved | rejected | resolved | applied
        sa.Column("actor", text, nullable=False),
        sa.Column("note", sa.Text),
    )  # fmt: skip
    return meta, items, audit


class ReviewStore:
    """The review queue on one SQLAlchemy engine. ``schema`` (PostgreSQL) isolates a set of tables.
    ``plant``: a plant's code location (INVSYNC_PLANT) sees and carries out only its plant's items,
    since every plant shares the store and each has its own DuckDB file (docs/deploy.md)."""

    def __init__(self, url: str, *, schema: str | None = None, plant: str | None = None) -> None:
        self.plant = plant
        self.url = with_project_driver(url)
        self.engine = ops_engine(self.url)
        self.meta, self.items, self.audit = _tables(schema)
        with self.engine.begin() as conn:
            if schema:
                conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
            self.meta.create_all(conn, checkfirst=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReviewStore:
        return cls(settings.ops_url, plant=settings.plant)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    # --- written by runs ----------------------------------------------------------------------------
    def hold(self, c: Correction, evidence: dict, now: datetime | None = None) -> bool:
        """Put a held correction in the queue with its evidence; False when it is there already
        (a rerun of the hour decides the same id)."""
        at = iso(now or datetime.now(UTC))
        row = {
            "correction_id": c.correction_id, "partition_hour": iso(c.partition_hour),
            "material_number": c.material_number, "material_type": c.material_type, "location": c.location,
            "plant": c.location.split("/")[0], "unit": c.unit, "cause": c.cause, "method": c.method,
            "target_system": c.target_system, "truth": c.truth, "rule": c.rule, "quantity": str(c.quantity),
            "pct_of_balance": _text(c.pct_of_balance), "value": _text(c.value), "critical": c.critical,
            "before_quantity": _text(c.before_quantity), "explained_by": json.dumps(list(c.explained_by)),
            "note": c.note, "held_by": c.decided_by, "held_at": at, "evidence": json.dumps(evidence, default=str),
            "status": HELD,
        }  # fmt: skip
        with self.engine.begin() as conn:
            if conn.execute(sa.select(self.items.c.correction_id).where(self._id(c.correction_id))).first():
                return False
            try:
                with conn.begin_nested():
                    conn.execute(self.items.insert().values(**row))
            except sa.exc.IntegrityError:
                return False  # another run held it just now
            self._log(conn, c.correction_id, "held", c.decided_by, c.note, at)
        return True

    def pending(self) -> list[dict]:
        """Approved items not applied yet, oldest decision first."""
        query = (
            sa.select(self.items)
            .where(self.items.c.status == "approved", self.items.c.applied_at.is_(None))
            .order_by(self.items.c.decided_at)
        )
        return self._rows(self._own(query))

    def mark_applied(self, cid: str, actor: str, note: str, effective_at: datetime, after: object, method: str) -> bool:
        """Record that an approved item was carried out (``method``: how, a count is adjusted);
        False when another run did it first."""
        at = iso(datetime.now(UTC))
        with self.engine.begin() as conn:
            done = conn.execute(
                self.items.update()
                .where(self._id(cid), self.items.c.status == "approved", self.items.c.applied_at.is_(None))
                .values(applied_at=at, effective_at=iso(effective_at), after_quantity=_text(after), method=method)
            ).rowcount
            if done == 1:
                self._log(conn, cid, "applied", actor, note, at)
        return done == 1

    def close(self, cid: str, actor: str, note: str, *, pending_approval: bool = False) -> bool:
        """Close an item as ``resolved`` (its variance resolved by itself): a held one, or with
        ``pending_approval`` an approved one not applied yet. False when it was not in that state."""
        at = iso(datetime.now(UTC))
        where = [self._id(cid)]
        if pending_approval:
            where += [self.items.c.status == "approved", self.items.c.applied_at.is_(None)]
            values: dict[str, Any] = {"status": "resolved"}
        else:
            where.append(self.items.c.status == HELD)
            values = {"status": "resolved", "decided_by": actor, "decided_at": at, "decision_note": note}
        with self.engine.begin() as conn:
            done = conn.execute(self.items.update().where(*where).values(**values)).rowcount
            if done == 1:
                self._log(conn, cid, "resolved", actor, note, at)
        return done == 1

    # --- written by supervisors ---------------------------------------------------------------------
    def decide(self, cid: str, decision: str, actor: str, note: str | None, effective: str = "now") -> dict:
        """Record a supervisor's decision on a held item, once: a second decision on the same
        item (from the page, the CLI, or a second tab) is refused with what was decided."""
        if decision not in DECISIONS or effective not in _EFFECTIVE:
            raise ValueError(f"decision={decision!r}, effective={effective!r}: use {DECISIONS} and {_EFFECTIVE}")
        at = iso(datetime.now(UTC))
        with self.engine.begin() as conn:
            done = conn.execute(
                self.items.update()
                .where(self._id(cid), self.items.c.status == HELD)
                .values(status=decision, decided_by=actor, decided_at=at, decision_note=note, effective=effective)
            ).rowcount
            if done == 1:
                self._log(conn, cid, decision, actor, note, at)
        if done != 1:
            item = self.item(cid)  # raises for an unknown id
            raise ReviewError(f"correction {cid} is {item['status']}, not waiting for review (decided by "
                              f"{item['decided_by']} at {item['decided_at']}); nothing changed")  # fmt: skip
        return self.item(cid)

    # --- read by everyone ---------------------------------------------------------------------------
    def known(self, cids: Sequence[str]) -> set[str]:
        """Those of ``cids`` the store holds, whatever their status."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(cids), 500):  # bound parameters per statement stay few
                chunk = list(cids[i : i + 500])
                query = sa.select(self.items.c.correction_id).where(self.items.c.correction_id.in_(chunk))
                found.update(conn.execute(query).scalars())
        return found

    def item(self, cid: str) -> dict:
        rows = self._rows(sa.select(self.items).where(self._id(cid)))
        if not rows:
            raise ReviewError(f"no correction {cid!r}; `invsync review list` shows the ones waiting")
        return rows[0]

    def queue(
        self,
        status: str | None = HELD,
        *,
        plant: str | None = None,
        material_type: str | None = None,
        cause: str | None = None,
        min_age_hours: float | None = None,
        now: datetime | None = None,
    ) -> list[dict]:
        """Items, oldest hour first, filtered; ``min_age_hours``: held at least that long ago."""
        c = self.items.c
        query = sa.select(self.items).order_by(c.partition_hour, c.correction_id)
        for column, wanted in ((c.status, status), (c.plant, plant or self.plant), (c.material_type, material_type),
                               (c.cause, cause)):  # fmt: skip
            if wanted:
                query = query.where(column == wanted)
        if min_age_hours:
            query = query.where(c.held_at <= iso((now or datetime.now(UTC)) - timedelta(hours=min_age_hours)))
        return self._rows(query)

    def choices(self) -> dict[str, list[str]]:
        """The plants, material types and causes present, for the queue's filters."""
        with self.engine.connect() as conn:
            return {
                name: sorted(v for (v,) in conn.execute(sa.select(self.items.c[name]).distinct()) if v)
                for name in ("plant", "material_type", "cause")
            }

    def trail(self, cid: str) -> list[dict]:
        query = sa.select(self.audit).where(self.audit.c.correction_id == cid).order_by(self.audit.c.audit_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def trail_since(self, audit_id: int) -> list[dict]:
        """Audit rows after ``audit_id``, in order: what a run copies into DuckDB for analysts."""
        query = sa.select(self.audit).where(self.audit.c.audit_id > audit_id).order_by(self.audit.c.audit_id)
        if self.plant:
            own = sa.select(self.items.c.correction_id).where(self.items.c.plant == self.plant)
            query = query.where(self.audit.c.correction_id.in_(own))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def _own(self, query: sa.Select) -> sa.Select:
        """``query`` limited to this plant's items (all items without a plant)."""
        return query.where(self.items.c.plant == self.plant) if self.plant else query

    def _id(self, cid: str) -> sa.ColumnElement[bool]:
        return self.items.c.correction_id == cid

    def _rows(self, query: sa.Select) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["explained_by"] = json.loads(row["explained_by"])
            row["evidence"] = json.loads(row["evidence"])
        return rows

    def _log(self, conn: sa.Connection, cid: str, action: str, actor: str, note: str | None, at: str) -> None:
        conn.execute(self.audit.insert().values(logged_at=at, correction_id=cid, action=action, actor=actor,
                                                note=note))  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@contextlib.contextmanager
def review_store(settings: Settings) -> Iterator[ReviewStore]:
    store = ReviewStore.from_settings(settings)
    try:
        yield store
    finally:
        store.dispose()
