"""The v1 message contract: parse a message body into an event or say exactly what is wrong.

Every rule of the table in DESIGN.md lives here, and nowhere else. ``parse_event`` is used by
every consumer (the ledger drain, the MES sync worker) and by the publisher before a message
leaves, so a rule broken anywhere gets the same error: the field, the value and the rule.

Whatever a body holds, ``parse_event`` raises nothing but ContractViolation (invariant 3: one
message never stops a consumer). Beyond the table it bounds what a sender may write: size,
nesting, number length, and how far a timestamp may lie in the past or future (ContractLimits,
from settings ``contract``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from invsync_pipeline.contract_errors import _MISSING, ContractViolation, error_text, preview, violation_of
from invsync_pipeline.contract_json import MAX_JSON_DEPTH, MAX_NUMBER_CHARS, best_effort_fields, decode_body

if TYPE_CHECKING:
    from invsync_pipeline.settings import Settings

SCHEMA_VERSION = "1"
ROUTING_KEY_PREFIX = "inventory"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_AGE_DAYS = 400
DEFAULT_MAX_FUTURE_MINUTES = 60
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

# Python regexes are only ever used with fullmatch: "$" would also match before a trailing
# newline, and \d would match any Unicode digit.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339_LONG_FRACTION = re.compile(r"[0-9-]{10}[Tt][0-9:]{8}\.[0-9]{7,}([Zz]|[+-][0-9:]{5})")
# Pydantic's patterns run on Rust's regex engine, where $ is the end of the text; [0-9], not \d,
# because \d is any Unicode digit there too.
_LOCATION = r"^[A-Za-z0-9_-]{1,16}/[A-Za-z0-9_-]{1,16}$"
_MOVEMENT_TYPE = r"^[0-9]{3}$"
_QUANTITY_MAX = Decimal("1e12")
_QUANTITY_DECIMALS = 6
_DECIMAL_STRING = re.compile(r"-?[0-9]+(\.[0-9]+)?")

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
    movement_type: str | None = Field(default=None, pattern=_MOVEMENT_TYPE)
    target_system: TargetSystem | None = None

    @field_validator("transaction_id", "material_number", "erp_reference")
    @classmethod
    def _printable(cls, value: str) -> str:
        # NUL cannot be stored in PostgreSQL text, and a zero-width or control character makes
        # an identifier that looks exactly like another one: identifiers are printable text.
        if not value.isprintable():
            raise PydanticCustomError("not_printable", _NOT_PRINTABLE_RULE)
        return value

    @field_validator("transaction_id")
    @classmethod
    def _fits_message_id(cls, value: str) -> str:
        # It travels as the AMQP message_id, a short string of at most 255 bytes: 64 characters
        # of four UTF-8 bytes each would not fit, and no publisher could send the event.
        if len(value.encode("utf-8")) > 255:
            raise PydanticCustomError("too_many_bytes", "must be at most 255 bytes in UTF-8 (the AMQP message_id)")
        return value

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
            "timestamp": instant_text(self.timestamp),
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


def instant_text(moment: datetime) -> str:
    """An aware datetime as the contract writes a timestamp: RFC 3339 in UTC, with Z (the one
    place this conversion is written; everything that sends or shows an instant uses it)."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; an instant must be aware (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def instant_of(text: str) -> datetime:
    """An RFC 3339 instant a system wrote (Z or an offset) as an aware datetime; ValueError if it is not one."""
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no offset; an instant needs one (Z for UTC)")
    return moment


def routing_key(warehouse: str, material_type: str, transaction_type: str) -> str:
    """``inventory.{warehouse}.{material_type}.{transaction_type}``, lower case."""
    for name, token in (("warehouse", warehouse), ("material_type", material_type),
                        ("transaction_type", transaction_type)):  # fmt: skip
        if not token or any(ch in token for ch in ".#* "):
            raise ContractViolation(name, token, "routing-key token must be non-empty, without . # * or spaces")
    return f"{ROUTING_KEY_PREFIX}.{warehouse.lower()}.{material_type}.{transaction_type}"


@dataclass(frozen=True)
class ContractLimits:
    """How much a sender may write: the body's size, and how far into the past and the future a
    timestamp may lie (relative to now, UTC, when the message is parsed; None: no bound).

    The horizon keeps an event from a clock gone wrong (year 9999, or 0001) out of the staged
    log, where its hour would wait for its turn forever. Build it from settings with
    ``ContractLimits.from_settings(settings)`` (``staging.max_body_bytes``, ``contract.*``)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_age_days: int | None = DEFAULT_MAX_AGE_DAYS
    max_future_minutes: int | None = DEFAULT_MAX_FUTURE_MINUTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ContractLimits:
        return cls(
            max_body_bytes=settings.staging.max_body_bytes,
            max_age_days=settings.contract.max_age_days,
            max_future_minutes=settings.contract.max_future_minutes,
        )


DEFAULT_LIMITS = ContractLimits()
# An event built by code, or read back from a system that recorded it long ago (the ERP's
# documents, the MES's applied log): its age is history, not a fault.
NO_HORIZON = ContractLimits(max_age_days=None, max_future_minutes=None)


def parse_event(
    body: bytes | str | dict,
    *,
    max_body_bytes: int | None = None,
    limits: ContractLimits | None = None,
) -> InventoryEvent:
    """Parse and validate a message body; raise ContractViolation naming field, value and rule.

    It never raises anything else, whatever the body holds. ``limits`` bound what a sender may
    write; without them a body as received (bytes or str) gets ``DEFAULT_LIMITS``, and a dict
    (an event built by code or read back from a system of record) gets no time horizon, just
    as the size limit only ever applied to bytes. ``max_body_bytes`` overrides the limits' one."""
    if limits is None:
        limits = NO_HORIZON if isinstance(body, dict) else DEFAULT_LIMITS
    if max_body_bytes is not None:
        limits = replace(limits, max_body_bytes=max_body_bytes)
    try:
        return _parse(body, limits)
    except ContractViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence of invariant 3
        # A kind of bad body nobody has thought of yet is still that message's fault alone.
        raise ContractViolation("body", preview(body), f"could not be read: {error_text(exc)}") from exc


def try_parse_event(
    body: bytes | str | dict, *, max_body_bytes: int | None = None, limits: ContractLimits | None = None
) -> InventoryEvent | ContractViolation:
    """Like ``parse_event`` but returns the violation instead of raising it."""
    try:
        return parse_event(body, max_body_bytes=max_body_bytes, limits=limits)
    except ContractViolation as violation:
        return violation


def _parse(body: bytes | str | dict, limits: ContractLimits) -> InventoryEvent:
    data = dict(body) if isinstance(body, dict) else decode_body(body, limits.max_body_bytes)
    # Only present fields are converted: a missing one must reach pydantic as missing, so the
    # error says "is required" rather than complaining about the type of a placeholder.
    if "timestamp" in data:
        data["timestamp"] = _timestamp(data["timestamp"], limits)
    if "quantity" in data:
        data["quantity"] = _quantity(data["quantity"])
    try:
        event = InventoryEvent.model_validate(data)
    except ValidationError as exc:
        raise violation_of(exc) from None
    _check_cross_field_rules(event)
    return event


def _timestamp(value: Any, limits: ContractLimits) -> Any:
    if value is _MISSING:
        return value  # pydantic reports the missing field
    if isinstance(value, str) and _RFC3339_LONG_FRACTION.fullmatch(value):
        raise ContractViolation("timestamp", value, "must have at most 6 digits of fractional seconds (microseconds)")
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ContractViolation(
            "timestamp", value, "must be an RFC 3339 string with an offset, e.g. 2026-11-24T10:15:00Z"
        )
    try:
        # Normalised to UTC, so hour partitions never depend on the sender's offset.
        ts = datetime.fromisoformat(value.replace("z", "Z")).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        # Overflow: a valid local time whose UTC instant lies outside years 1-9999.
        raise ContractViolation("timestamp", value, f"is not a real date and time in UTC ({exc})") from None
    now = datetime.now(UTC)
    if limits.max_age_days is not None and ts < _shifted(now, -timedelta(days=limits.max_age_days)):
        raise ContractViolation(
            "timestamp",
            value,
            f"must be at most {limits.max_age_days} days in the past (setting contract.max_age_days)",
        )
    if limits.max_future_minutes is not None and ts > _shifted(now, timedelta(minutes=limits.max_future_minutes)):
        raise ContractViolation(
            "timestamp",
            value,
            f"must be at most {limits.max_future_minutes} minutes in the future; check the sender's clock "
            "(setting contract.max_future_minutes)",
        )
    return ts


def _shifted(now: datetime, by: timedelta) -> datetime:
    try:
        return now + by
    except OverflowError:  # a horizon past year 1 or 9999 bounds nothing
        return datetime.min.replace(tzinfo=UTC) if by < timedelta(0) else datetime.max.replace(tzinfo=UTC)


def _quantity(value: Any) -> Any:
    if value is _MISSING:
        return value
    # bool is an int in Python; a JSON true is never a quantity.
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ContractViolation("quantity", value, "must be a decimal number (JSON number or numeric string)")
    if isinstance(value, int) and abs(value) >= _QUANTITY_MAX:
        # Compared as an int: turning a huge one into text could fail (over 4,300 digits).
        raise ContractViolation("quantity", value, f"must be below {_QUANTITY_MAX:,.0f} in absolute value")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise ContractViolation("quantity", value, f"must be a decimal of at most {MAX_NUMBER_CHARS} characters")
        if not _DECIMAL_STRING.fullmatch(value):
            raise ContractViolation("quantity", value, 'must be a plain decimal string such as "12.5" or "-3"')
    try:
        quantity = value if isinstance(value, Decimal) else Decimal(value if isinstance(value, str) else str(value))
    except (InvalidOperation, ValueError):
        raise ContractViolation("quantity", value, "must be a decimal number") from None
    if not quantity.is_finite():
        raise ContractViolation("quantity", value, "must be a finite number")
    if abs(quantity) >= _QUANTITY_MAX:
        raise ContractViolation("quantity", value, f"must be below {_QUANTITY_MAX:,.0f} in absolute value")
    step = Decimal(1).scaleb(-_QUANTITY_DECIMALS)
    if -quantity.as_tuple().exponent > _QUANTITY_DECIMALS and quantity != quantity.quantize(step):
        raise ContractViolation("quantity", value, f"must have at most {_QUANTITY_DECIMALS} decimal places")
    # One canonical form ("1.50" and "1.5" are the same quantity), never in exponent notation.
    quantity = quantity.quantize(step).normalize()
    return quantity if quantity.as_tuple().exponent <= 0 else quantity.quantize(Decimal(1))


_NOT_PRINTABLE_RULE = "must be printable text: no control, zero-width, line-break or non-ASCII space characters"


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
    from invsync_pipeline.contract_schema import build_json_schema

    return build_json_schema()


__all__ = [
    "DEFAULT_LIMITS", "MAX_JSON_DEPTH", "MAX_NUMBER_CHARS", "MOVEMENT_TYPES", "NO_HORIZON", "PUBLISHED_MS_HEADER",
    "ContractLimits", "ContractViolation", "InventoryEvent", "best_effort_fields", "instant_of", "instant_text",
    "json_schema",
    "parse_event", "routing_key", "try_parse_event",
]  # fmt: skip
