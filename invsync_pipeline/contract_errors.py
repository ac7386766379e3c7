"""The contract's one error: which field, which value, which rule a message broke."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import ValidationError


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


class ContractViolation(ValueError):
    """A message broke a rule of the contract. ``field``, ``value`` and ``rule`` say which.

    The value is kept short and always encodable as UTF-8, since it travels on in headers, JSON
    and logs: a long text is cut, a huge integer or a container becomes a short description."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field = _shown(field)
        self.value = _shown(value)
        self.rule = _shown(rule, limit=500)
        super().__init__(str(self))

    def __reduce__(self):  # picklable, so it can cross process boundaries
        return (ContractViolation, (self.field, self.value, self.rule))

    def __str__(self) -> str:
        return f"{self.field}={_short(self.value)}: {self.rule}"


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = str(value) if isinstance(value, Decimal) else repr(value)
    except Exception:  # noqa: BLE001 - a value too deep or too big to show is still refused
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any, limit: int = 200) -> Any:
    """A value as a violation keeps it: small, and encodable as UTF-8 (no lone surrogates)."""
    if value is None or isinstance(value, bool | float | _Missing):
        return value
    if isinstance(value, int):
        # str() of an int over 4,300 digits raises; ~60 digits is plenty to show.
        return (
            value if value.bit_length() <= 200 else f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
        )
    if isinstance(value, Decimal):
        return value if len(value.as_tuple().digits) <= 60 else _short(value, limit)
    if isinstance(value, bytes | bytearray):
        return bytes(value[:limit])
    text = value if isinstance(value, str) else _short(value, limit)
    text = text[: limit + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preview(body: Any) -> Any:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body[:40])
    if isinstance(body, str):
        return body[:40]
    return f"<{type(body).__name__}>"


def error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = ""
    return f"{type(exc).__name__}: {text}"[:300]


_RULES = {
    "string_unicode": "must be valid Unicode text (a lone surrogate is not)",
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


def violation_of(exc: ValidationError) -> ContractViolation:
    """The first error pydantic found, as the contract says it: field, value, rule."""
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
