"""SAP movement types both ways: the document items a contract event posts, and the events a document means.

The mapping is DESIGN.md's (via ``contract.MOVEMENT_TYPES``). A few extra codes let every reason of
the contract be posted: 201/202 (consumption to cost centre and its reversal) carry corrections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from invsync_pipeline.contract import MOVEMENT_TYPES, ContractViolation, InventoryEvent, instant_text, parse_event

DEBIT, CREDIT = "S", "H"  # SHKZG: S adds to stock, H takes from it

_RECEIPT_BY_REASON = {"purchase_receipt": "101", "production_receipt": "101", "return": "262"}
_ISSUE_BY_REASON = {
    "production_consumption": "261", "shipment": "601", "scrap": "551", "return": "122",
    "purchase_receipt": "102", "production_receipt": "102",
}  # fmt: skip
_EXTRA_TYPES = {"201": "issue", "202": "receipt"}
# The reason of a movement type; a reversal (code + 1) not listed takes its original's reason.
_REASONS = {
    "101": "purchase_receipt", "501": "purchase_receipt", "561": "correction",
    "261": "production_consumption", "262": "return", "601": "shipment", "641": "shipment",
    "551": "scrap", "122": "return", "161": "return", "301": "stock_transfer", "311": "stock_transfer",
    "701": "correction", "702": "correction", "201": "correction",
}  # fmt: skip
# KZBEW "F" marks a goods receipt for a production order (as opposed to "B", a purchase order).
_PRODUCTION_ORDER, _PURCHASE_ORDER = "F", "B"


@dataclass(frozen=True)
class ItemPlan:
    """One document item to write: where, which way, how much (always positive)."""

    movement_type: str
    debit_credit: str
    location: str
    quantity: Decimal
    movement_indicator: str | None = None
    inventory_document: str | None = None

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.debit_credit == DEBIT else -self.quantity


def movement_kind(movement_type: str) -> str | None:
    """receipt/issue/transfer/adjustment for a movement type, or None if unknown."""
    return MOVEMENT_TYPES.get(movement_type) or _EXTRA_TYPES.get(movement_type)


def plan_items(event: InventoryEvent, book_stock: Decimal | None = None) -> list[ItemPlan]:
    """The items an event posts. A cycle count needs ``book_stock`` at its location and posts the
    difference as 701/702 (no items when the count agrees)."""
    kind, qty, given = event.transaction_type, event.quantity, event.movement_type
    if kind == "receipt":
        code = given or _RECEIPT_BY_REASON.get(event.reason, "202")
        return [ItemPlan(code, DEBIT, event.location, qty, _indicator(code, event.reason))]
    if kind == "issue":
        code = given or _ISSUE_BY_REASON.get(event.reason, "201")
        return [ItemPlan(code, CREDIT, event.location, qty, _indicator(code, event.reason))]
    if kind == "transfer":
        code = given or "311"
        assert event.to_location is not None  # the contract requires it for transfers
        return [ItemPlan(code, CREDIT, event.location, qty), ItemPlan(code, DEBIT, event.to_location, qty)]
    if kind == "adjustment":
        code = given or ("701" if qty > 0 else "702")
        return [ItemPlan(code, DEBIT if qty > 0 else CREDIT, event.location, abs(qty))]
    if book_stock is None:
        raise ValueError("a cycle count needs the book stock at its location")
    diff = qty - book_stock
    if diff == 0:
        return []
    code, side = ("701", DEBIT) if diff > 0 else ("702", CREDIT)
    return [ItemPlan(code, side, event.location, abs(diff), inventory_document=event.erp_reference)]


def _indicator(code: str, reason: str) -> str | None:
    if code in ("101", "102"):
        return _PRODUCTION_ORDER if reason == "production_receipt" else _PURCHASE_ORDER
    return None


def reason_of(movement_type: str, movement_indicator: str | None, inventory_document: str | None) -> str:
    """The contract reason a document item stands for."""
    if movement_type in ("101", "102") and movement_indicator == _PRODUCTION_ORDER:
        return "production_receipt"
    if movement_type in ("701", "702") and inventory_document:
        return "physical_inventory"
    if movement_type in _REASONS:
        return _REASONS[movement_type]
    if movement_type.isdigit() and (original := f"{int(movement_type) - 1:03d}") in _REASONS:
        return _REASONS[original]
    return "correction"


def document_events(
    items: Iterable[Mapping[str, Any]], material_type_of: Callable[[str | None], str]
) -> list[InventoryEvent]:
    """Contract events of document items (rows with the documents' logical columns plus ``mtart``),
    in the order given. Items of one document become one event per movement: a transfer's two
    items make one event; any item that cannot be read as its movement type becomes a signed
    adjustment, so the stock effect is never lost."""
    documents: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in items:
        documents[(row["document_year"], row["document_number"])].append(row)
    events = []
    for rows in documents.values():
        drafts = _drafts(sorted(rows, key=lambda r: r["item"]))
        base_id = rows[0].get("transaction_id") or f"ERP-{rows[0]['document_year']}-{rows[0]['document_number']}"
        for draft, first in drafts:
            # One document normally is one transaction; a many-item SAP document needs one id per movement.
            tid = base_id if len(drafts) == 1 else f"{base_id[:58]}-{first['item']:04d}"
            draft.update(transaction_id=tid, material_type=material_type_of(first.get("mtart")))
            try:
                events.append(parse_event(draft))
            except ContractViolation as exc:
                raise ContractViolation(
                    exc.field, exc.value, f"{exc.rule} (ERP document {first['document_number']}/"
                    f"{first['document_year']} item {first['item']})"
                ) from None  # fmt: skip
    return events


def _drafts(rows: list[Mapping[str, Any]]) -> list[tuple[dict[str, Any], Mapping[str, Any]]]:
    out: list[tuple[dict[str, Any], Mapping[str, Any]]] = []
    open_sends: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        code = row["movement_type"]
        if row["quantity"] == 0:
            continue  # no stock effect, and the contract has no zero movement
        if movement_kind(code) != "transfer":
            out.append((_single(row), row))
            continue
        # SAP writes a transfer as a pair: the H item leaves, the S item (same material) arrives.
        key = (code, row["material"])
        if row["debit_credit"] == CREDIT:
            open_sends[key].append(row)
        elif open_sends[key]:
            send = open_sends[key].pop(0)
            draft = _base(send, "transfer", send["quantity"], code)
            draft["to_location"] = _location(row)
            out.append((draft, send))
        else:
            out.append((_single(row, fallback=True), row))
    out.extend((_single(row, fallback=True), row) for sends in open_sends.values() for row in sends)
    return sorted(out, key=lambda pair: pair[1]["item"])


def _single(row: Mapping[str, Any], fallback: bool = False) -> dict[str, Any]:
    code, side, qty = row["movement_type"], row["debit_credit"], row["quantity"]
    kind = None if fallback else movement_kind(code)
    signed = qty if side == DEBIT else -qty
    if kind in ("receipt", "issue") and side == (DEBIT if kind == "receipt" else CREDIT):
        return _base(row, kind, qty, code)
    if kind == "adjustment" and side == {"701": DEBIT, "702": CREDIT}.get(code, side):
        return _base(row, "adjustment", signed, code)
    # Unknown code, a lone transfer item, or a sign that contradicts the code: keep the stock
    # effect as a signed adjustment; an unknown 3-digit code is kept for the reader.
    keep = code if movement_kind(code) is None and code.isdigit() and len(code) == 3 else None
    return _base(row, "adjustment", signed, keep)


def _base(row: Mapping[str, Any], kind: str, quantity: Decimal, code: str | None) -> dict[str, Any]:
    timestamp: datetime = row["entry_timestamp"]
    draft: dict[str, Any] = {
        "schema_version": "1",
        "timestamp": instant_text(timestamp),
        "source_system": "ERP",
        "material_number": row["material"],
        "quantity": format(quantity, "f"),
        "unit": row["unit"],
        "location": _location(row),
        "transaction_type": kind,
        "reason": reason_of(row["movement_type"], row.get("movement_indicator"), row.get("inventory_document")),
        "erp_reference": row["document_number"],
    }
    if code is not None:
        draft["movement_type"] = code
    return draft


def _location(row: Mapping[str, Any]) -> str:
    return f"{row['plant']}/{row['storage_location']}"
