"""Posting a contract event into the SAP-shaped tables as one material document, idempotent and concurrency-safe.

Used through ``ErpDatabase.post`` by the reference plant and by reconciliation's ERP corrections.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.sources.erp_movements import DEBIT, plan_items
from invsync_pipeline.sources.erp_schema import MATERIAL_DOCUMENT_RANGE, MTART_FOR_TYPE, ErpTables

_NEEDED_TO_POST = ("transaction_id", "movement_indicator", "inventory_document", "reference")


class ErpPostingError(ValueError):
    """A posting was refused; nothing was written. The message says why and what to change."""


@dataclass(frozen=True)
class PostedItem:
    """One item of a material document (quantity positive; ``debit_credit`` S adds, H takes)."""

    item: int
    movement_type: str
    debit_credit: str
    material: str
    location: str
    quantity: Decimal
    unit: str

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.debit_credit == DEBIT else -self.quantity


@dataclass(frozen=True)
class PostedDocument:
    """The material document of one transaction. ``document_number`` is None for a cycle count
    that matched the book stock; ``created`` is False when the transaction had been posted before."""

    transaction_id: str
    document_number: str | None
    document_year: str | None
    items: tuple[PostedItem, ...]
    created: bool


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT that supports ON CONFLICT (PostgreSQL and SQLite, the databases invsync writes to)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ErpPostingError(f"writing to an ERP on {dialect} is not supported; it is read-only here")


def post_event(conn: sa.Connection, tables: ErpTables, dialect: str, event: InventoryEvent) -> PostedDocument:
    """Post ``event`` inside the caller's write transaction (which must BEGIN IMMEDIATE on SQLite)."""
    t = tables
    for needed in _NEEDED_TO_POST:
        if needed not in t.documents.c:
            raise ErpPostingError(f"erp.tables.documents.{needed} is mapped to '': this ERP is read-only")
    # Claiming the id first makes a racing poster of the same id wait here, then see our document.
    claimed = conn.execute(
        dialect_insert(dialect, t.postings)
        .values(transaction_id=event.transaction_id, posted_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=[t.postings.c.transaction_id])
        .returning(t.postings.c.transaction_id)  # rowcount is -1 here on psycopg
    ).first()
    if claimed is None:
        existing = find_posting(conn, t, event.transaction_id)
        assert existing is not None
        return existing
    _ensure_material(conn, t, dialect, event)
    # Every poster locks the number range before any stock row, so two postings touching the
    # same stock rows in another order queue up instead of deadlocking.
    ranges = t.number_ranges
    current = conn.execute(
        sa.select(ranges.c.current).where(ranges.c.object == MATERIAL_DOCUMENT_RANGE).with_for_update()
    ).scalar_one_or_none()
    if current is None:
        raise ErpPostingError(f"number range {MATERIAL_DOCUMENT_RANGE} is missing: run `invsync erp init`")
    book = None
    if event.transaction_type == "cycle_count":
        _add_stock(conn, t, dialect, event.material_number, event.location, Decimal(0), event.unit)
        plant, storage_location = event.location.split("/")
        book = conn.execute(
            sa.select(t.stock.c.quantity).where(
                t.stock.c.material == event.material_number,
                t.stock.c.plant == plant,
                t.stock.c.storage_location == storage_location,
            )
        ).scalar_one()
    plans = plan_items(event, book)
    if not plans:
        return PostedDocument(event.transaction_id, None, None, (), created=True)
    number, year = f"{current + 1:010d}", f"{event.timestamp.astimezone(UTC).year:04d}"
    conn.execute(sa.update(ranges).where(ranges.c.object == MATERIAL_DOCUMENT_RANGE).values(current=current + 1))
    rows = [
        {
            "document_number": number,
            "document_year": year,
            "item": n,
            "movement_type": p.movement_type,
            "debit_credit": p.debit_credit,
            "material": event.material_number,
            "plant": p.location.split("/")[0],
            "storage_location": p.location.split("/")[1],
            "quantity": p.quantity,
            "unit": event.unit,
            "entry_timestamp": event.timestamp,
            "transaction_id": event.transaction_id,
            "movement_indicator": p.movement_indicator,
            "inventory_document": p.inventory_document,
            "reference": event.erp_reference,
        }
        for n, p in enumerate(plans, start=1)
    ]
    conn.execute(sa.insert(t.documents), rows)
    for plan in plans:
        _add_stock(conn, t, dialect, event.material_number, plan.location, plan.signed_quantity, event.unit)
    conn.execute(
        sa.update(t.postings)
        .where(t.postings.c.transaction_id == event.transaction_id)
        .values(document_number=number, document_year=year)
    )
    return PostedDocument(event.transaction_id, number, year, _items(rows), created=True)


def find_posting(conn: sa.Connection, tables: ErpTables, transaction_id: str) -> PostedDocument | None:
    """The document posted for a transaction id, or None if it was never posted here."""
    postings, docs = tables.postings, tables.documents
    head = conn.execute(
        sa.select(postings.c.document_number, postings.c.document_year).where(
            postings.c.transaction_id == transaction_id
        )
    ).first()
    if head is None:
        return None
    rows = conn.execute(
        sa.select(*labelled(docs.c))
        .where(docs.c.document_number == head.document_number, docs.c.document_year == head.document_year)
        .order_by(docs.c.item)
    ).mappings()
    return PostedDocument(transaction_id, head.document_number, head.document_year, _items(rows), created=False)


def labelled(columns: Any) -> list[sa.Label[Any]]:
    """Columns labelled with their logical names, so result rows read the same whatever a replica calls them."""
    return [column.label(column.key) for column in columns]


def _ensure_material(conn: sa.Connection, tables: ErpTables, dialect: str, event: InventoryEvent) -> None:
    mara = tables.materials
    conn.execute(
        dialect_insert(dialect, mara)
        .values(material=event.material_number, material_type=MTART_FOR_TYPE[event.material_type],
                base_unit=event.unit)
        .on_conflict_do_nothing(index_elements=[mara.c.material])
    )  # fmt: skip
    base_unit = conn.execute(sa.select(mara.c.base_unit).where(mara.c.material == event.material_number)).scalar_one()
    if base_unit != event.unit:
        raise ErpPostingError(
            f"unit={event.unit!r}: material {event.material_number} is kept in base unit {base_unit!r} "
            f"in the ERP; convert the quantity to {base_unit} before posting"
        )


def _add_stock(
    conn: sa.Connection, tables: ErpTables, dialect: str, material: str, location: str, delta: Decimal, unit: str
) -> None:
    stock = tables.stock
    plant, storage_location = location.split("/")
    values: dict[str, Any] = {"material": material, "plant": plant, "storage_location": storage_location,
                              "quantity": delta}  # fmt: skip
    if "unit" in stock.c:
        values["unit"] = unit
    stmt = dialect_insert(dialect, stock).values(**values)
    # One statement, so concurrent posters never both insert the same new stock row.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[stock.c.material, stock.c.plant, stock.c.storage_location],
            set_={stock.c.quantity: stock.c.quantity + stmt.excluded.quantity},
        )
    )


def _items(rows: Any) -> tuple[PostedItem, ...]:
    return tuple(
        PostedItem(r["item"], r["movement_type"], r["debit_credit"], r["material"],
                   f"{r['plant']}/{r['storage_location']}", r["quantity"], r["unit"])
        for r in rows
    )  # fmt: skip
