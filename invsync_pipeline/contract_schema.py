"""The JSON Schema of contract v1, derived from the event model, for teams that publish or consume events."""

from __future__ import annotations

from typing import Any

from invsync_pipeline.contract import _LOCATION, _MOVEMENT_TYPE, _RFC3339, InventoryEvent
from invsync_pipeline.contract_json import MAX_NUMBER_CHARS

# Characters str.isprintable() refuses that an identifier could hide, as a regex class (JSON
# Schema patterns are ECMA-262; Python's re reads the same escapes).
_NOT_PRINTABLE_CLASS = (
    "\\x00-\\x1f\\x7f-\\xa0\\xad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u1680\\u180e"
    "\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u2064\\u2066-\\u206f\\u3000\\ud800-\\udfff\\ufeff\\ufff9-\\ufffb"
)


def _schema_pattern(body: str) -> str:
    """An anchored JSON Schema pattern. (?!\\n) because Python's $ (used by Python validators)
    also matches before a trailing newline; in ECMA-262 it changes nothing."""
    return f"^(?:{body})(?!\\n)$"


def build_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of contract v1, for teams that publish or consume events."""
    schema = InventoryEvent.model_json_schema(mode="validation")
    props = schema["properties"]
    props["timestamp"] = {"type": "string", "format": "date-time", "pattern": _schema_pattern(_RFC3339.pattern),
                          "description": "RFC 3339 with an offset, at most 6 fractional digits; when the movement "
                                         "happened, at most contract.max_age_days (400) in the past and "
                                         "contract.max_future_minutes (60) in the future"}  # fmt: skip
    props["quantity"] = {"type": ["number", "string"], "pattern": _schema_pattern(r"-?[0-9]+(\.[0-9]{1,6})?"),
                         "maxLength": MAX_NUMBER_CHARS,
                         "description": "decimal; receipt/issue/transfer > 0, adjustment signed and "
                                        "non-zero, cycle_count the counted balance >= 0"}  # fmt: skip
    for optional in ("to_location", "movement_type", "target_system"):
        props[optional] = {k: v for k, v in props[optional].items() if k != "default"}
        props[optional].pop("anyOf", None)
    # null is read as absent by the parser, so the schema allows it too.
    props["to_location"].update(type=["string", "null"], pattern=_LOCATION)
    props["movement_type"].update(type=["string", "null"], pattern=_MOVEMENT_TYPE)
    props["target_system"].update(type=["string", "null"], enum=["ERP", "MES", None])
    # Identifiers are printable text (str.isprintable in the parser). A JSON Schema pattern cannot
    # name Unicode categories portably, so it lists the characters that matter in practice:
    # controls, zero-width and direction marks, line separators, non-ASCII spaces, surrogates.
    props["transaction_id"]["pattern"] = f"^[^\\s{_NOT_PRINTABLE_CLASS}]+$"
    props["material_number"]["pattern"] = (
        f"^[^\\s{_NOT_PRINTABLE_CLASS}]([^{_NOT_PRINTABLE_CLASS}]*[^\\s{_NOT_PRINTABLE_CLASS}])?$"
    )
    props["erp_reference"]["pattern"] = f"^[^{_NOT_PRINTABLE_CLASS}]+$"
    for prop in props.values():
        if "pattern" in prop and not prop["pattern"].endswith("(?!\\n)$"):
            prop["pattern"] = _schema_pattern(prop["pattern"].removeprefix("^").removesuffix("$"))
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
                    "then": {
                        "properties": {
                            "quantity": {"exclusiveMinimum": 0, "pattern": _schema_pattern(r"[0-9]+(\.[0-9]{1,6})?")}
                        }
                    },
                },
            ],
        }  # fmt: skip
    )
    return schema
