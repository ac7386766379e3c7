"""Reading a message body as JSON, strictly (for the contract) or as far as it goes (for tools).

Strict: duplicate keys, NaN and Infinity, numbers longer than MAX_NUMBER_CHARS and nesting
deeper than MAX_JSON_DEPTH are refused with a ContractViolation naming the field; numbers stay
exact (Decimal). Best effort: whatever top-level fields can be read, never an exception.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from invsync_pipeline.contract_errors import ContractViolation

# A v1 body is one flat object. Anything nested deeper than this is refused before it is
# parsed, so no body can exhaust the parser's recursion.
MAX_JSON_DEPTH = 16
# Characters of one number (a JSON number, or a quantity string): far above any quantity
# (< 1e12, 6 decimals) and far below Python's 4,300-digit limit for converting text to int.
MAX_NUMBER_CHARS = 40
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


class _Refused:
    """A JSON value the decoder would not turn into a Python one (a number too long, NaN):
    the object holding it names the field."""

    __slots__ = ("text", "rule")

    def __init__(self, text: str, rule: str):
        self.text = text if len(text) <= 40 else f"{text[:20]}...<{len(text)} chars>"
        self.rule = rule

    def __repr__(self) -> str:
        return self.text


def _json_int(text: str) -> int | _Refused:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(text, f"must be a number of at most {MAX_NUMBER_CHARS} characters")
    return int(text)


def _json_decimal(text: str) -> Decimal | _Refused:
    # Decimal, not float: a quantity stays exactly what the sender wrote.
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(text, f"must be a number of at most {MAX_NUMBER_CHARS} characters")
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal holds
        return _Refused(text, "must be a number Decimal can hold")


def _refused_constant(text: str) -> _Refused:
    return _Refused(text, "must be a finite number; NaN and Infinity are not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                raise ContractViolation(key, value, "appears twice in the object; each field may be given once")
            seen.add(key)
    for key, value in obj.items():
        if type(value) is _Refused:
            raise ContractViolation(key, value.text, value.rule)
    return obj


# Numbers are bounded before conversion and kept exact, NaN and Infinity refused; the strict
# decoder also refuses duplicate keys (with the last one winning, a reader could see either).
_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_json_int, parse_float=_json_decimal, parse_constant=_refused_constant
)
_LENIENT_JSON = json.JSONDecoder(parse_int=_json_int, parse_float=_json_decimal, parse_constant=_refused_constant)


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """True when JSON text nests arrays and objects deeper than ``limit`` (strings skipped)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, at C speed
    depth, in_string, skip_to = 0, False, -1
    for match in _JSON_STRUCTURE.finditer(text):
        at, char = match.start(), match.group()
        if at < skip_to:
            continue  # the character after a backslash in a string
        if in_string:
            if char == "\\":
                skip_to = at + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def decode_body(body: bytes | str, max_body_bytes: int) -> dict:
    """The body as a JSON object, strictly; a ContractViolation says what is wrong with it."""
    if isinstance(body, memoryview | bytearray):
        body = bytes(body)
    # The limit is on bytes on the wire; a str counts its UTF-8 encoding, not its characters.
    size = len(body.encode("utf-8", "surrogatepass")) if isinstance(body, str) else len(body)
    if size == 0:
        raise ContractViolation("body", "", "must be a JSON object; the message body is empty")
    if size > max_body_bytes:
        raise ContractViolation("body", f"<{size} bytes>", f"must be at most {max_body_bytes} bytes")
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise ContractViolation("body", body[:40], f"must be UTF-8 ({exc.reason} at byte {exc.start})") from None
    if _nesting_depth_exceeds(text, MAX_JSON_DEPTH):
        raise ContractViolation(
            "body",
            body[:40],
            f"must not nest arrays or objects more than {MAX_JSON_DEPTH} deep (v1 is one flat object)",
        )
    try:
        data = _STRICT_JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise ContractViolation("body", body[:40], f"must be JSON ({exc.msg} at char {exc.pos})") from None
    if isinstance(data, _Refused):
        raise ContractViolation("body", data.text, data.rule)
    if not isinstance(data, dict):
        raise ContractViolation("body", data, f"must be a JSON object, got {type(data).__name__}")
    return data


def best_effort_fields(body: Any) -> dict[str, Any]:
    """The top-level fields of a body that may break the contract, as far as they can be read.

    For tools that show, filter or route invalid messages (the DLQ, the backlog). Never raises:
    {} when the body is not a readable JSON object. Duplicate keys keep the last value, numbers
    come as int or exact Decimal (those too long to convert are left out), text is always
    encodable as UTF-8 (lone surrogates become backslash escapes)."""
    try:
        if isinstance(body, dict):
            data = body
        else:
            raw = (
                bytes(body)
                if isinstance(body, bytes | bytearray | memoryview)
                else str(body).encode("utf-8", "surrogatepass")
            )
            if len(raw) > _BEST_EFFORT_MAX_BYTES:
                return {}
            text = raw.decode("utf-8", "replace")
            if _nesting_depth_exceeds(text, MAX_JSON_DEPTH):
                return {}
            data = _LENIENT_JSON.decode(text)
        if not isinstance(data, dict):
            return {}
        return {
            _encodable(str(key)): _encodable(value) if isinstance(value, str) else value
            for key, value in data.items()
            if not isinstance(value, _Refused)
        }
    except Exception:  # noqa: BLE001 - best effort: nothing readable is an answer too
        return {}


_BEST_EFFORT_MAX_BYTES = 16 * 1024 * 1024


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
