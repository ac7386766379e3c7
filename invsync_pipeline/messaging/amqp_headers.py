"""Read AMQP headers whatever a sender put in them, so no header can stop a consumer.

pika decodes a message's header table before any of our code sees the message, and an error
while decoding drops the whole connection: the broker then delivers the same message again,
which drops the connection again, forever. RabbitMQ passes on two such headers from any client:
a timestamp outside Python's datetime range (year > 9999) and a table nested about 1,000 deep
(pika's decoder recurses). ``install()`` wraps pika's decoder once per process: such a timestamp
decodes to its raw seconds, a float pika cannot turn into an int stays a float, and a table or
array nested deeper than ``MAX_DEPTH`` becomes a short placeholder. Everything else decodes as
pika always did. ``as_json`` then shows any decoded value as plain JSON, for the quarantine and
the DLQ tools.
"""

from __future__ import annotations

import math
import struct
import threading
from typing import Any

import pika.data

MAX_DEPTH = 64

_local = threading.local()
_pika_decode_value = pika.data.decode_value


def _decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    kind = encoded[offset : offset + 1]
    if kind in (b"F", b"A"):
        depth = getattr(_local, "depth", 0)
        if depth >= MAX_DEPTH:
            (size,) = struct.unpack_from(">I", encoded, offset + 1)
            name = "table" if kind == b"F" else "array"
            return f"<{name} nested deeper than {MAX_DEPTH}>", offset + 5 + size
        _local.depth = depth + 1
        try:
            return _pika_decode_value(encoded, offset)
        finally:
            _local.depth = depth
    try:
        return _pika_decode_value(encoded, offset)
    except (ValueError, OverflowError, OSError):
        if kind == b"T":
            return struct.unpack_from(">Q", encoded, offset + 1)[0], offset + 9
        if kind == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        if kind == b"f":
            return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
        raise


def as_json(value: Any, depth: int = 0) -> Any:
    """A value pika decoded from a sender's headers, as plain JSON: str, int, finite float,
    bool, None, lists and objects. Text keeps lone surrogates as backslash escapes."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if depth >= MAX_DEPTH and isinstance(value, dict | list | tuple):
        return f"<{type(value).__name__} nested deeper than {MAX_DEPTH}>"
    if isinstance(value, dict):
        return {str(as_json(k)): as_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v, depth + 1) for v in value]
    try:
        return as_json(str(value))  # Decimal, datetime and anything else pika may hand over
    except Exception as exc:  # noqa: BLE001 - a value that cannot even be shown is named
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"


def headers_as_json(headers: Any) -> dict[str, Any]:
    """A message's headers as a JSON object, whatever they hold (for listings and the quarantine)."""
    shown = as_json(headers if isinstance(headers, dict) else {})
    return shown if isinstance(shown, dict) else {}


# A copy we publish again (a failure on its way to a retry tier or parking, a replay) adds
# headers of its own, and the whole content header must fit in one frame (131,072 bytes unless
# configured otherwise) or the broker drops the connection: the same message would come back and
# drop it again. A sender's headers larger than this are left off such a copy; the body travels.
MAX_REPUBLISHED_HEADER_BYTES = 64 * 1024


def why_not_republishable(headers: Any) -> str | None:
    """None when a sender's headers can travel on with a copy of its message; else why not."""
    try:
        size = pika.data.encode_table([], headers or {})
    except Exception as exc:  # noqa: BLE001 - any value pika refuses to encode
        return f"pika cannot encode them ({type(exc).__name__}: {exc})"[:300]
    if size > MAX_REPUBLISHED_HEADER_BYTES:
        return f"they take {size:,} bytes, more than the {MAX_REPUBLISHED_HEADER_BYTES:,} a copy may carry"
    return None


def install() -> None:
    """Make pika's header decoding tolerant (idempotent; pika's tables call it by module name)."""
    pika.data.decode_value = _decode_value
