"""The v1 message contract: parse a message body into an event or say exactly what is wrong.

Every rule of the table in DESIGN.md lives here, and nowhere else. ``parse_event`` is used by
every consumer (the ledger drain, the MES sync worker) and by the publisher before a message
leaves, so a rule broken anywhere gets the same error: the field, the value and the rule.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = "1"
ROUTING_KEY_PREFIX = "inventory"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# AMQP header with the publish time in ms (the AMQP timestamp property has whole seconds);
# the sync worker measures sync lag from it.
PUBLISHED_MS_HEADER = "x-invsync-published-ms"

SourceSystem = Literal["ERP", "MES", "RECON"]
TargetSystem = Literal["ERP", "MES"]
MaterialType = Literal["raw", "wip", "finished", "packaging", "mro"]
TransactionType = Literal["receipt", "issue", "transfer", "adjustment", "cycle_count"]
Reason = Literal[
    "purchase_receipt",
    "production_receipt",
    "production_consumption",
    "shipment",
    "scrap",
    "return",
    "stock_transfer",
    "physical_inventory",
    "correction",
]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_LOCATION = r"^[A-Za-z0-9_-]{1,16}/[A-Za-z0-9_-]{1,16}$"
_QUANTITY_MAX = Decimal("1e12")
_QUANTITY_DECIMALS = 6
_DECIMAL_STRING = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

# SAP movement type -> contract transaction type (DESIGN.md). A reversal is the code + 1 and
# the opposite movement: 102 reverses a receipt, so it is an issue; 312 is still a transfer.
MOVEMENT_TYPES: dict[str, TransactionType] = {
    "101": "receipt", "501": "receipt", "561": "receipt",
    "261": "issue", "601": "issue", "641": "issue", "551": "issue", "122": "issue", "161": "issue",
    "301": "transfer", "311": "transfer",
    "701": "adjustment", "702": "adjustment",
}  # fmt: skip
_OPPOSITE: dict[str, TransactionType] = {"receipt": "issue", "issue": "receipt", "transfer": "transfer"}
for _code, _kind in list(MOVEMENT_TYPES.items()):
    if _kind in _OPPOSITE and str(int(_code) + 1) not in MOVEMENT_TYPES:
        MOVEMENT_TYPES[str(int(_code) + 1)] = _OPPOSITE[_kind]


class ContractViolation(ValueError):
    """A message broke a rule of the contract. ``field``, ``value`` and ``rule`` say which."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(str(self))

    def __reduce__(self):  # picklable, so it can cross process boundaries
        return (ContractViolation, (self.field, self.value, self.rule))

    def __str__(self) -> str:
        return f"{self.field}={_short(self.value)}: {self.rule}"


def _short(value: Any, limit: int = 80) -> str:
    text = str(value) if isinstance(value, Decimal) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InventoryEvent(BaseModel):
    """One material movement, as every system in the flow sees it (message contract v1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal["1"]
    transaction_id: str = Field(min_length=1, max_length=64, pattern=r"^\S+$")
    timestamp: datetime
    source_system: SourceSystem
    material_number: str = Field(min_length=1, max_length=40, pattern=r"^\S(.*\S)?$")
    material_type: MaterialType
    quantity: Decimal
    unit: str = Field(pattern=r"^[A-Z][A-Z0-9]{0,5}$")
    location: str = Field(pattern=_LOCATION)
    to_location: str | None = Field(default=None, pattern=_LOCATION)
    transaction_type: TransactionType
    reason: Reason
    erp_reference: str = Field(min_length=1, max_length=64)
    movement_type: str | None = Field(default=None, pattern=r"^\d{3}$")
    target_system: TargetSystem | None = None

    @property
    def warehouse(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def routing_key(self) -> str:
        return routing_key(self.warehouse, self.material_type, self.transaction_type)

    @property
    def is_critical(self) -> bool:
        return self.transaction_type in ("receipt", "issue", "transfer")

    def stock_effects(self) -> list[tuple[str, Decimal]]:
        """(location, signed change of stock) of this movement; a transfer leaves `location` and
        arrives at `to_location`. A cycle count sets a balance and moves nothing: []."""
        kind, q = self.transaction_type, self.quantity
        if kind == "cycle_count":
            return []
        if kind == "transfer":
            return [(self.location, -q), (self.to_location, q)]  # type: ignore[list-item]
        return [(self.location, -q if kind == "issue" else q)]

    def to_message(self) -> dict[str, Any]:
        """The JSON object to publish: timestamps in UTC, the quantity as an exact string."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "transaction_id": self.transaction_id,
            "timestamp": self.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "source_system": self.source_system,
            "material_number": self.material_number,
            "material_type": self.material_type,
            "quantity": format(self.quantity, "f"),
            "unit": self.unit,
            "location": self.location,
            "transaction_type": self.transaction_type,
            "reason": self.reason,
            "erp_reference": self.erp_reference,
        }
        for optional in ("to_location", "movement_type", "target_system"):
            if (value := getattr(self, optional)) is not None:
                out[optional] = value
        return out

    def to_body(self) -> bytes:
        return json.dumps(self.to_message(), separators=(",", ":")).encode()


def routing_key(warehouse: str, material_type: str, transaction_type: str) -> str:
    """``inventory.{warehouse}.{material_type}.{transaction_type}``, lower case."""
    for name, token in (("warehouse", warehouse), ("material_type", material_type),
                        ("transaction_type", transaction_type)):  # fmt: skip
        if not token or any(ch in token for ch in ".#* "):
            raise ContractViolation(name, token, "routing-key token must be non-empty, without . # * or spaces")
    return f"{ROUTING_KEY_PREFIX}.{warehouse.lower()}.{material_type}.{transaction_type}"


def parse_event(body: bytes | str | dict, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> InventoryEvent:
    """Parse and validate a message body; raise ContractViolation naming field, value and rule."""
    data = body if isinstance(body, dict) else _decode(body, max_body_bytes)
    data = dict(data)
    # Only present fields are converted: a missing one must reach pydantic as missing, so the
    # error says "is required" rather than complaining about the type of a placeholder.
    if "timestamp" in data:
        data["timestamp"] = _timestamp(data["timestamp"])
    if "quantity" in data:
        data["quantity"] = _quantity(data["quantity"])
    try:
        event = InventoryEvent.model_validate(data)
    except ValidationError as exc:
        raise _violation(exc) from None
    _check_cross_field_rules(event)
    return event


def try_parse_event(
    body: bytes | str | dict, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> InventoryEvent | ContractViolation:
    """Like ``parse_event`` but returns the violation instead of raising it."""
    try:
        return parse_event(body, max_body_bytes=max_body_bytes)
    except ContractViolation as violation:
        return violation


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _decode(body: bytes | str, max_body_bytes: int) -> dict:
    # The limit is on bytes on the wire; a str counts its UTF-8 encoding, not its characters.
    size = len(body.encode("utf-8", "surrogatepass")) if isinstance(body, str) else len(body)
    if size == 0:
        raise ContractViolation("body", "", "must be a JSON object; the message body is empty")
    if size > max_body_bytes:
        raise ContractViolation("body", f"<{size} bytes>", f"must be at most {max_body_bytes} bytes")
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes | bytearray) else body)
    except UnicodeDecodeError as exc:
        raise ContractViolation("body", body[:40], f"must be UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ContractViolation("body", body[:40], f"must be JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise ContractViolation("body", data, f"must be a JSON object, got {type(data).__name__}")
    return data


def _timestamp(value: Any) -> Any:
    if value is _MISSING:
        return value  # pydantic reports the missing field
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ContractViolation(
            "timestamp", value, "must be an RFC 3339 string with an offset, e.g. 2026-11-24T10:15:00Z"
        )
    try:
        # Normalised to UTC, so hour partitions never depend on the sender's offset.
        return datetime.fromisoformat(value.replace("z", "Z")).astimezone(UTC)
    except ValueError as exc:
        raise ContractViolation("timestamp", value, f"is not a real date and time ({exc})") from None


def _quantity(value: Any) -> Any:
    if value is _MISSING:
        return value
    # bool is an int in Python; a JSON true is never a quantity.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ContractViolation("quantity", value, "must be a decimal number (JSON number or numeric string)")
    if isinstance(value, str) and not _DECIMAL_STRING.match(value):
        raise ContractViolation("quantity", value, 'must be a plain decimal string such as "12.5" or "-3"')
    try:
        quantity = Decimal(str(value)) if not isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise ContractViolation("quantity", value, "must be a decimal number") from None
    if not quantity.is_finite():
        raise ContractViolation("quantity", value, "must be a finite number")
    if abs(quantity) >= _QUANTITY_MAX:
        raise ContractViolation("quantity", value, f"must be below {_QUANTITY_MAX:,.0f} in absolute value")
    if -quantity.as_tuple().exponent > _QUANTITY_DECIMALS and quantity != quantity.quantize(
        Decimal(1).scaleb(-_QUANTITY_DECIMALS)
    ):
        raise ContractViolation("quantity", value, f"must have at most {_QUANTITY_DECIMALS} decimal places")
    # One canonical form ("1.50" and "1.5" are the same quantity), never in exponent notation.
    quantity = quantity.quantize(Decimal(1).scaleb(-_QUANTITY_DECIMALS)).normalize()
    return quantity if quantity.as_tuple().exponent <= 0 else quantity.quantize(Decimal(1))


_RULES = {
    "literal_error": "must be one of {expected}",
    "missing": "is required",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "string_type": "must be a string",
    "extra_forbidden": "is not a field of contract v1 (check the spelling)",
}
_PATTERN_RULES = {
    "transaction_id": "must be 1-64 characters without spaces",
    "material_number": "must not start or end with spaces",
    "unit": "must be an upper-case base unit of measure such as KG, EA, L",
    "location": "must be WAREHOUSE/STORAGE_LOCATION, e.g. WH01/RM01",
    "to_location": "must be WAREHOUSE/STORAGE_LOCATION, e.g. WH01/FG01",
    "movement_type": "must be a 3-digit SAP movement type such as 101",
}


def _violation(exc: ValidationError) -> ContractViolation:
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    field = ".".join(str(p) for p in loc) if loc else "body"
    value = err.get("input", _MISSING) if err["type"] != "missing" else _MISSING
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        rule = _PATTERN_RULES.get(field, err["msg"])
    elif kind in _RULES:
        rule = _RULES[kind].format(**(err.get("ctx") or {}))
    else:
        rule = err["msg"]
    return ContractViolation(field, value, rule)


def _check_cross_field_rules(event: InventoryEvent) -> None:
    kind, quantity = event.transaction_type, event.quantity
    if kind in ("receipt", "issue", "transfer") and quantity <= 0:
        raise ContractViolation("quantity", quantity, f"must be > 0 for a {kind}")
    if kind == "adjustment" and quantity == 0:
        raise ContractViolation("quantity", quantity, "must be signed and non-zero for an adjustment")
    if kind == "cycle_count" and quantity < 0:
        raise ContractViolation("quantity", quantity, "is the counted balance for a cycle_count and must be >= 0")
    if kind == "transfer":
        if event.to_location is None:
            raise ContractViolation("to_location", _MISSING, "is required for a transfer")
        if event.to_location == event.location:
            raise ContractViolation("to_location", event.to_location, "must differ from location")
    elif event.to_location is not None:
        raise ContractViolation("to_location", event.to_location, f"must be absent for a {kind}")
    if event.source_system == "RECON" and event.target_system is None:
        raise ContractViolation("target_system", _MISSING, "is required when source_system is RECON")
    if event.source_system != "RECON" and event.target_system is not None:
        raise ContractViolation(
            "target_system", event.target_system, f"must be absent when source_system is {event.source_system}"
        )
    if event.movement_type is not None and (expected := MOVEMENT_TYPES.get(event.movement_type)):
        if expected != kind:
            raise ContractViolation(
                "movement_type",
                event.movement_type,
                f"SAP movement type {event.movement_type} means {expected}, not {kind}",
            )
        if event.movement_type == "701" and quantity < 0:
            raise ContractViolation("quantity", quantity, "must be > 0 for movement type 701 (inventory gain)")
        if event.movement_type == "702" and quantity > 0:
            raise ContractViolation("quantity", quantity, "must be < 0 for movement type 702 (inventory loss)")


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of contract v1, for teams that publish or consume events."""
    schema = InventoryEvent.model_json_schema(mode="validation")
    props = schema["properties"]
    props["timestamp"] = {"type": "string", "format": "date-time", "pattern": _RFC3339.pattern,
                          "description": "RFC 3339 with an offset; when the movement happened"}  # fmt: skip
    props["quantity"] = {"type": ["number", "string"], "pattern": r"^-?\d+(\.\d{1,6})?$",
                         "description": "decimal; receipt/issue/transfer > 0, adjustment signed and "
                                        "non-zero, cycle_count the counted balance >= 0"}  # fmt: skip
    for optional in ("to_location", "movement_type", "target_system"):
        props[optional] = {k: v for k, v in props[optional].items() if k != "default"}
        props[optional].pop("anyOf", None)
    # null is read as absent by the parser, so the schema allows it too.
    props["to_location"].update(type=["string", "null"], pattern=_LOCATION)
    props["movement_type"].update(type=["string", "null"], pattern=r"^\d{3}$")
    props["target_system"].update(type=["string", "null"], enum=["ERP", "MES", None])
    schema.update(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:invsync:contract:inventory-event:v1",
            "title": "invsync inventory event v1",
            "description": (InventoryEvent.__doc__ or "").strip()
            + " Routing key: inventory.{warehouse}.{material_type}.{transaction_type}.",
            "additionalProperties": False,
            "allOf": [
                {
                    "if": {"properties": {"transaction_type": {"const": "transfer"}}},
                    "then": {"required": ["to_location"], "properties": {"to_location": {"type": "string"}}},
                    "else": {"properties": {"to_location": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"source_system": {"const": "RECON"}}},
                    "then": {"required": ["target_system"], "properties": {"target_system": {"type": "string"}}},
                    "else": {"properties": {"target_system": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"transaction_type": {"enum": ["receipt", "issue", "transfer"]}}},
                    "then": {"properties": {"quantity": {"exclusiveMinimum": 0, "pattern": r"^\d+(\.\d{1,6})?$"}}},
                },
            ],
        }  # fmt: skip
    )
    return schema
