"""The reference MES's production API: backflushes it books and publishes itself, and its outbox of unpublished ones.

Reference-only: a real MES has its own way of booking production. The event-driven path only
needs what the inventory API offers (mes_service.py).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from invsync_pipeline.contract import ContractViolation, InventoryEvent, instant_text, parse_event
from invsync_pipeline.reference.mes_http import error_response
from invsync_pipeline.reference.mes_store import MesStore

log = logging.getLogger(__name__)

Publish = Callable[[InventoryEvent], None]
_BACKFLUSH_FIELDS = {"material_number", "material_type", "location", "quantity", "unit", "order"}
_BACKFLUSH_OPTIONAL = {"transaction_id", "timestamp"}


def production_routes(store: MesStore, publish: Publish | None) -> list[Route]:
    """The routes of /api/v1/production on the live dataset ``store``."""
    # Publishers such as a pika channel are not thread-safe; requests run in a threadpool.
    publish_lock = threading.Lock()

    def publish_recorded(event: InventoryEvent) -> bool:
        if publish is None:
            return False
        try:
            with publish_lock:
                publish(event)
        except Exception as exc:  # the event stays in the unpublished table; nothing is lost
            log.warning("publishing backflush %s failed: %s", event.transaction_id, exc)
            store.mark_publish_failed(event.transaction_id, f"{type(exc).__name__}: {exc}")
            return False
        store.mark_published(event.transaction_id)
        return True

    async def backflush(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested ~1,000 deep
            return error_response(422, f"body must be JSON: {exc!r}"[:300], "body", None, "must be a JSON object")
        if not isinstance(body, dict):
            return error_response(422, "body must be a JSON object", "body", body, "must be a JSON object")
        if extra := sorted(body.keys() - _BACKFLUSH_FIELDS - _BACKFLUSH_OPTIONAL):
            return error_response(
                422,
                f"{extra[0]} is not a backflush field",
                extra[0],
                body[extra[0]],
                f"use {sorted(_BACKFLUSH_FIELDS | _BACKFLUSH_OPTIONAL)}",
            )
        if missing := sorted(_BACKFLUSH_FIELDS - body.keys()):
            return error_response(422, f"{missing[0]} is required", missing[0], None, "is required")
        given_timestamp = "timestamp" in body
        message = {
            "schema_version": "1",
            "transaction_id": body.get("transaction_id") or f"MES-BF-{uuid.uuid4()}",
            "timestamp": body.get("timestamp") or instant_text(datetime.now(UTC)),
            "source_system": "MES",
            "material_number": body["material_number"],
            "material_type": body["material_type"],
            "quantity": body["quantity"],
            "unit": body["unit"],
            "location": body["location"],
            "transaction_type": "issue",
            "reason": "production_consumption",
            "erp_reference": body["order"],
            "movement_type": "261",
        }
        try:
            event = parse_event(message)
        except ContractViolation as exc:
            field = "order" if exc.field == "erp_reference" else exc.field
            return error_response(422, f"{field}: {exc.rule}", field, exc.value, exc.rule)
        # Recorded as unpublished in the same SQLite transaction as the apply: if the publisher
        # or the process fails next, the event still waits in the table (an outbox).
        recorded = await run_in_threadpool(
            store.record, event, unpublished=True, ignore_timestamp_on_repeat=not given_timestamp
        )
        if recorded.status == "duplicate":
            published = not await run_in_threadpool(store.is_unpublished, event.transaction_id)
        else:
            published = await run_in_threadpool(publish_recorded, recorded.event)
        return JSONResponse(
            {"event": recorded.event.to_message(), **recorded.body(), "published": published},
            status_code=201 if recorded.status == "applied" else 200,
        )

    async def list_unpublished(request: Request) -> Response:
        return JSONResponse({"items": await run_in_threadpool(store.unpublished)})

    async def retry_unpublished(request: Request) -> Response:
        if publish is None:
            return error_response(
                409,
                "this MES was started without a publisher; nothing can be published",
                "publish",
                None,
                "start the MES with a publish callable (create_app(publish=...))",
            )
        pending = await run_in_threadpool(store.unpublished)
        # A backflush publishing at this moment may go out twice; consumers dedupe by transaction_id.
        published = 0
        for item in pending:
            published += await run_in_threadpool(publish_recorded, parse_event(item["event"]))
        return JSONResponse({"published": published, "still_unpublished": len(pending) - published})

    return [
        Route("/api/v1/production/backflush", backflush, methods=["POST"]),
        Route("/api/v1/production/unpublished", list_unpublished, methods=["GET"]),
        Route("/api/v1/production/unpublished/retry", retry_unpublished, methods=["POST"]),
    ]
