"""The OpenAPI 3.1 document of the reference MES, written by hand so every answer it gives is described."""

from __future__ import annotations

import functools
from typing import Any

from invsync_pipeline.contract import json_schema

_REF = "#/components/schemas/"
_DATETIME = {"type": "string", "format": "date-time"}
_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$", "description": "exact decimal as a string"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ERRORS = {
    "401": _json(_ref("Error"), "Missing or wrong bearer token."),
}
_FAULTED = {
    "500": _json(_ref("Error"), "Internal error (also injected by the error_rate fault)."),
    "503": _json(_ref("Error"), "The MES is in an outage (the outage fault); retry later."),
}
_BAD_QUERY = {"400": _json(_ref("Error"), "A query parameter is unknown or malformed; `field` names it.")}
_PAGING = [
    _query("page_size", "Items per page, 1-10000 (default 1000).", {"type": "integer", "minimum": 1, "maximum": 10000}),
    _query("page_token", "The next_page_token of the previous page; opaque."),
]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong, in one line."},
            "field": {"type": "string", "description": "The field or parameter at fault."},
            "value": {"description": "The value that broke the rule (null when it was missing)."},
            "rule": {"type": "string", "description": "The rule it broke: what to send instead."},
        },
    },
    "PostResult": {
        "type": "object",
        "required": ["mes_transaction_id", "status", "transaction_id", "applied_at"],
        "properties": {
            "mes_transaction_id": {"type": "string", "pattern": "^MES-"},
            "status": {"enum": ["applied", "duplicate", "not_applicable"]},
            "transaction_id": {"type": "string"},
            "applied_at": {**_DATETIME, "description": "When the MES first recorded it (server clock, UTC)."},
            "original_status": {"enum": ["applied", "not_applicable"], "description": "Only on a duplicate."},
        },
    },
    "StockRow": {
        "type": "object",
        "required": ["location", "material_number", "unit", "quantity"],
        "properties": {
            "location": {"type": "string"},
            "material_number": {"type": "string"},
            "unit": {"type": "string"},
            "quantity": _DECIMAL,
        },
    },
    "StockPage": {
        "type": "object",
        "required": ["items", "next_page_token", "as_of"],
        "properties": {
            "items": {"type": "array", "items": _ref("StockRow")},
            "next_page_token": {"type": ["string", "null"]},
            "as_of": {**_DATETIME, "description": "The as_of asked for, or the server time for current stock."},
        },
    },
    "Movement": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "material_number": {"type": "string"},
            "unit": {"type": "string"},
            "before": _DECIMAL,
            "after": _DECIMAL,
        },
    },
    "LoggedTransaction": {
        "description": "The event as recorded (contract v1 fields) plus what the MES did with it.",
        "allOf": [
            _ref("InventoryEvent"),
            {
                "type": "object",
                "required": ["mes_transaction_id", "status", "applied_at", "movements"],
                "properties": {
                    "mes_transaction_id": {"type": "string"},
                    "status": {"enum": ["applied", "not_applicable"]},
                    "applied_at": _DATETIME,
                    "movements": {
                        "type": "array",
                        "items": _ref("Movement"),
                        "description": "Balance before and after, per stock key it changed.",
                    },
                },
            },
        ],
    },
    "TransactionPage": {
        "type": "object",
        "required": ["items", "next_page_token"],
        "properties": {
            "items": {"type": "array", "items": _ref("LoggedTransaction")},
            "next_page_token": {"type": ["string", "null"]},
        },
    },
    "Backflush": {
        "type": "object",
        "additionalProperties": False,
        "required": ["material_number", "material_type", "location", "quantity", "unit", "order"],
        "properties": {
            "material_number": {"type": "string"},
            "material_type": {"enum": ["raw", "wip", "finished", "packaging", "mro"]},
            "location": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,16}/[A-Za-z0-9_-]{1,16}$"},
            "quantity": {"type": ["string", "number"], "description": "consumed quantity, > 0"},
            "unit": {"type": "string"},
            "order": {"type": "string", "description": "The production order; becomes erp_reference."},
            "transaction_id": {"type": "string", "description": "Idempotency key; default MES-BF-<uuid>."},
            "timestamp": {**_DATETIME, "description": "When it was consumed; default now."},
        },
    },
    "BackflushResult": {
        "allOf": [
            _ref("PostResult"),
            {
                "type": "object",
                "required": ["event", "published"],
                "properties": {
                    "event": _ref("InventoryEvent"),
                    "published": {"type": "boolean", "description": "false: waiting in /api/v1/production/unpublished"},
                },
            },
        ],
    },
    "Unpublished": {
        "type": "object",
        "properties": {
            "event": _ref("InventoryEvent"),
            "mes_transaction_id": {"type": "string"},
            "recorded_at": _DATETIME,
            "last_error": {"type": ["string", "null"]},
        },
    },
    "Faults": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "error_rate": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "Share of inventory requests answered 500 (seeded RNG).",
            },
            "latency_ms": {
                "type": "integer",
                "minimum": 0,
                "maximum": 600000,
                "description": "Added to every inventory request, before anything is applied.",
            },
            "outage": {"type": "boolean", "description": "true: inventory requests and /healthz answer 503."},
            "lost_answer_rate": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "Share of posts applied, then answered 504: the answer lost on the way back.",
            },
            "locked_locations": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Locations under a physical count: posts there are answered 503 (per item in a batch).",
            },
            "outage_windows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["start", "end"],
                    "properties": {"start": _DATETIME, "end": _DATETIME},
                },
                "description": "Outages by clock: [start, end).",
            },
        },
    },
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    event = {k: v for k, v in json_schema().items() if k not in ("$schema", "$id")}
    auth = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/api/v1/inventory/transactions": {
            "post": {
                "summary": "Apply an inventory event (idempotent by transaction_id)",
                "description": (
                    "receipt +q at location; issue -q; transfer -q at location and +q at to_location; adjustment "
                    "+q (signed); cycle_count sets the balance to q. Stock is per (location, material_number, "
                    "unit); negative balances are allowed. A RECON event whose target_system is ERP is recorded "
                    "but not applied (status not_applicable). The same transaction_id again answers 200 "
                    "duplicate with the original mes_transaction_id; with a different event, 409."
                ),
                "security": auth,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("InventoryEvent")}}},
                "responses": {
                    "201": _json(_ref("PostResult"), "Applied now."),
                    "200": _json(_ref("PostResult"), "Already recorded (duplicate) or not for the MES."),
                    "409": _json(_ref("Error"), "transaction_id already used for a different event."),
                    "422": _json(_ref("Error"), "The body breaks contract v1; field, value and rule say how."),
                    **_ERRORS,
                    **_FAULTED,
                },
            },
            "get": {
                "summary": "The recorded transactions, in the order the MES applied them",
                "security": auth,
                "parameters": [
                    _query("since", "Only those applied at or after this instant (RFC 3339).", _DATETIME),
                    _query("until", "Only those applied before this instant (RFC 3339).", _DATETIME),
                    _query("transaction_id", "Only this transaction."),
                    *_PAGING,
                ],
                "responses": {"200": _json(_ref("TransactionPage"), "One page."), **_BAD_QUERY, **_ERRORS, **_FAULTED},
            },
        },
        "/api/v1/inventory/transactions/batch": {
            "post": {
                "summary": "Apply many inventory events, one per line, in one database transaction",
                "description": (
                    "The body is newline-delimited JSON: one contract-v1 event per line, each read exactly as a "
                    "single post is. At most 5,000 lines. The answer has one result per line, in order: "
                    "http_status, what a single post would have answered (201 applied, 200 duplicate or not for "
                    "the MES, 409 a transaction_id used for another event, 422 the line breaks the contract), "
                    "with that post's body."
                ),
                "security": auth,
                "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["results"],
                            "properties": {"results": {"type": "array", "items": {"type": "object"}}},
                        },
                        "A result per line, in order.",
                    ),  # fmt: skip
                    "422": _json(_ref("Error"), "More lines than a batch may hold."),
                    **_ERRORS,
                    **_FAULTED,
                },
            },
        },
        "/api/v1/inventory/stock": {
            "get": {
                "summary": "Stock balances, current or as of an instant",
                "description": (
                    "Ordered by (location, material_number, unit). With as_of, each balance is the sum of the "
                    "effects of the movements whose event timestamp is before as_of (strictly); an effect is the "
                    "balance after minus before as applied, so cycle counts are exact. Without as_of, pages "
                    "read live balances: pass as_of for a snapshot that does not move between pages."
                ),
                "security": auth,
                "parameters": [
                    _query("location", "Exact location, e.g. WH01/RM01."),
                    _query("warehouse", "All locations of a warehouse, e.g. WH01."),
                    _query("material_number", "Exact material number."),
                    _query("as_of", "RFC 3339 instant with an offset.", _DATETIME),
                    *_PAGING,
                ],
                "responses": {"200": _json(_ref("StockPage"), "One page."), **_BAD_QUERY, **_ERRORS, **_FAULTED},
            },
        },
        "/api/v1/production/backflush": {
            "post": {
                "summary": "Consume WIP for a production order (MES-originated issue, movement type 261)",
                "description": "Applied, then published to the exchange so ERP and the ledger learn of it.",
                "security": auth,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Backflush")}}},
                "responses": {
                    "201": _json(_ref("BackflushResult"), "Applied now."),
                    "200": _json(_ref("BackflushResult"), "That transaction_id was already recorded."),
                    "409": _json(_ref("Error"), "transaction_id already used for a different event."),
                    "422": _json(_ref("Error"), "A field is missing or breaks contract v1."),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/production/unpublished": {
            "get": {
                "summary": "MES-originated events not yet published",
                "security": auth,
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"items": {"type": "array", "items": _ref("Unpublished")}}},
                        "All of them, oldest first.",
                    ),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/production/unpublished/retry": {
            "post": {
                "summary": "Try to publish every unpublished event again",
                "security": auth,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"published": {"type": "integer"}, "still_unpublished": {"type": "integer"}},
                        },
                        "How many went out.",
                    ),
                    "409": _json(_ref("Error"), "The MES runs without a publisher."),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/admin/faults": {
            "get": {
                "summary": "The faults injected now",
                "security": auth,
                "responses": {"200": _json(_ref("Faults"), "Current faults."), **_ERRORS},
            },
            "put": {
                "summary": "Change injected faults; fields left out keep their value",
                "security": auth,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Faults")}}},
                "responses": {
                    "200": _json(_ref("Faults"), "The faults now in force."),
                    "422": _json(_ref("Error"), "A field is unknown or out of range."),
                    **_ERRORS,
                },
            },
        },
        "/healthz": {
            "get": {
                "summary": "Liveness; no token needed",
                "security": [],
                "responses": {
                    "200": _json({"type": "object", "properties": {"status": {"const": "ok"}}}, "Up."),
                    "503": _json({"type": "object", "properties": {"status": {"const": "outage"}}}, "In an outage."),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document; no token needed",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "invsync reference MES",
            "version": "1.0.0",
            "description": (
                "A Smart Factory stand-in: inventory postings, stock, the applied log, backflush, faults. "
                "The /api/v1/inventory paths also exist under /ns/{namespace}/ as separate datasets, e.g. "
                "/ns/shadow/ for the stock a cutover's event-driven path writes in shadow mode."
            ),
        },
        "servers": [{"url": "/"}, {"url": "/ns/{namespace}", "variables": {"namespace": {"default": "shadow"}}}],
        "security": auth,
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"InventoryEvent": event, **_SCHEMAS},
        },
    }
