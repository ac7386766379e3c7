"""The reference MES ("Smart Factory" stand-in): a real HTTP service that tests and the demo sync against.

Storage is ``mes_store``, faults and auth ``mes_http``, the OpenAPI document ``mes_openapi``.
Faults (errors, latency, outages) are switched on over the admin API so the sync worker is
tested against an MES that misbehaves the way real ones do. They are decided before anything is
applied, so a faulted request never half-applies a transaction. Latency comes before the apply:
a client whose timeout is shorter than ``latency_ms`` gives up while the MES still applies the
transaction a moment later, the "applied but never confirmed" case that idempotency is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from invsync_pipeline.contract import ContractViolation, InventoryEvent, parse_event
from invsync_pipeline.reference.mes_http import BearerAuth, FaultInjector, error_response
from invsync_pipeline.reference.mes_openapi import openapi_document
from invsync_pipeline.reference.mes_store import BadRequest, MesStore, Recorded, TransactionConflict, parse_instant

log = logging.getLogger(__name__)

Publish = Callable[[InventoryEvent], None]

MAX_PAGE_SIZE = 10_000
_NAMESPACE = re.compile(r"[a-z0-9_-]{1,32}")
_BACKFLUSH_FIELDS = {"material_number", "material_type", "location", "quantity", "unit", "order"}
_BACKFLUSH_OPTIONAL = {"transaction_id", "timestamp"}


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    params = dict(request.query_params)
    for name in params:
        if name not in allowed:
            # A misspelt filter silently ignored would return everything; say so instead.
            raise BadRequest(name, params[name], f"is not a parameter here; use one of {sorted(allowed)}")
    return params


def _page_size(params: dict[str, str]) -> int:
    raw = params.get("page_size", "1000")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise BadRequest("page_size", raw, f"must be an integer from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _recorded_body(recorded: Recorded) -> dict[str, Any]:
    body = {
        "mes_transaction_id": recorded.mes_transaction_id,
        "status": recorded.status,
        "transaction_id": recorded.transaction_id,
        "applied_at": recorded.applied_at,
    }
    if recorded.status == "duplicate":
        body["original_status"] = recorded.original_status
    return body


def create_app(db_path: str | Path, token: str, publish: Publish | None = None, seed: int = 0) -> Starlette:
    """The MES as an ASGI app. ``publish`` receives MES-originated events (backflushes)."""
    if not token:
        raise ValueError("the MES needs a bearer token; set INVSYNC_MES_TOKEN")
    store = MesStore(db_path)
    # Namespaces (/ns/{name}/api/v1/inventory/...) are separate MES datasets on the same server,
    # e.g. the shadow stock the event-driven path writes during a cutover. Each has its own
    # SQLite file next to the live one; "live" is the un-prefixed API.
    stores = {"live": store}
    stores_lock = threading.Lock()

    def store_for(request: Request) -> MesStore:
        name = request.path_params.get("namespace", "live")
        if not _NAMESPACE.fullmatch(name):
            raise BadRequest("namespace", name, "must be 1-32 lower-case letters, digits, '_' or '-'")
        with stores_lock:
            if name not in stores:
                path = Path(db_path)
                stores[name] = MesStore(path.with_name(f"{path.stem}.{name}{path.suffix}"))
            return stores[name]

    faults = FaultInjector(seed)
    # Publishers such as a pika channel are not thread-safe; requests run in a threadpool.
    publish_lock = threading.Lock()

    def faulted(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapper(request: Request) -> Response:
            # Read the body first: a client that times out during the latency must not stop
            # the apply, exactly like a real MES that finishes work nobody waits for any more.
            await request.body()
            latency, status, why = faults.decide()
            if latency:
                await asyncio.sleep(latency)
            if status is not None:
                return error_response(status, why)
            response = await endpoint(request)
            if request.method == "POST" and response.status_code < 300 and faults.lose_answer():
                return error_response(504, "the answer was lost on the way back (injected fault); it was applied")
            return response

        return wrapper

    async def post_transaction(request: Request) -> Response:
        # parse_event refuses whatever a body holds with a ContractViolation, never anything
        # else, so a malformed body is the client's 422, never a retryable 500.
        try:
            event = parse_event(await request.body())
        except ContractViolation as exc:
            return error_response(422, str(exc), exc.field, exc.value, exc.rule)
        recorded = await run_in_threadpool(store_for(request).record, event)
        return JSONResponse(_recorded_body(recorded), status_code=201 if recorded.status == "applied" else 200)

    async def get_stock(request: Request) -> Response:
        params = _query(request, {"location", "warehouse", "material_number", "as_of", "page_size", "page_token"})
        as_of = parse_instant("as_of", params["as_of"]) if "as_of" in params else None
        items, next_token = await run_in_threadpool(
            store_for(request).stock,
            location=params.get("location"),
            warehouse=params.get("warehouse"),
            material_number=params.get("material_number"),
            as_of=as_of,
            page_size=_page_size(params),
            page_token=params.get("page_token"),
        )
        stamp = (as_of or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
        return JSONResponse({"items": items, "next_page_token": next_token, "as_of": stamp})

    async def get_transactions(request: Request) -> Response:
        params = _query(request, {"since", "until", "transaction_id", "page_size", "page_token"})
        items, next_token = await run_in_threadpool(
            store_for(request).transactions,
            since=parse_instant("since", params["since"]) if "since" in params else None,
            until=parse_instant("until", params["until"]) if "until" in params else None,
            transaction_id=params.get("transaction_id"),
            page_size=_page_size(params),
            page_token=params.get("page_token"),
        )
        return JSONResponse({"items": items, "next_page_token": next_token})

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
            "timestamp": body.get("timestamp") or datetime.now(UTC).isoformat().replace("+00:00", "Z"),
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
            {"event": recorded.event.to_message(), **_recorded_body(recorded), "published": published},
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

    async def faults_endpoint(request: Request) -> Response:
        if request.method == "PUT":
            try:
                patch = json.loads(await request.body() or b"null")
            except ValueError as exc:
                return error_response(422, f"body must be JSON: {exc}", "body", None, "must be a JSON object")
            if not isinstance(patch, dict):
                return error_response(
                    422,
                    "body must be a JSON object",
                    "body",
                    patch,
                    "must be a JSON object of the fault fields to change",
                )
            try:
                faults.update(patch)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                field = ".".join(str(p) for p in err["loc"]) or "body"
                return error_response(422, f"{field}: {err['msg']}", field, err.get("input"), err["msg"])
        return JSONResponse(json.loads(faults.faults.model_dump_json()))

    async def healthz(request: Request) -> Response:
        if faults.faults.in_outage(datetime.now(UTC)):
            return JSONResponse({"status": "outage"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def on_bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        status = 409 if isinstance(exc, TransactionConflict) else 400
        return error_response(status, str(exc), exc.field, exc.value, exc.rule)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this response is sent, so uvicorn logs the traceback.
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for each in stores.values():
            each.close()

    inventory = [
        ("/api/v1/inventory/transactions", faulted(post_transaction), ["POST"]),
        ("/api/v1/inventory/transactions", faulted(get_transactions), ["GET"]),
        ("/api/v1/inventory/stock", faulted(get_stock), ["GET"]),
    ]
    routes = [
        *(Route(path, endpoint, methods=methods) for path, endpoint, methods in inventory),
        *(Route("/ns/{namespace}" + path, endpoint, methods=methods) for path, endpoint, methods in inventory),
        Route("/api/v1/production/backflush", backflush, methods=["POST"]),
        Route("/api/v1/production/unpublished", list_unpublished, methods=["GET"]),
        Route("/api/v1/production/unpublished/retry", retry_unpublished, methods=["POST"]),
        Route("/api/v1/admin/faults", faults_endpoint, methods=["GET", "PUT"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, token=token)],
        exception_handlers={BadRequest: on_bad_request, HTTPException: on_http_error, Exception: on_crash},
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.faults = faults
    return app


def serve(host: str, port: int, db_path: str | Path, token: str, publish: Publish | None = None) -> None:
    """Run the MES in the foreground until interrupted."""
    uvicorn.run(create_app(db_path, token, publish), host=host, port=port, log_level="info")


class RunningMes:
    """An MES served from a background thread; ``url`` has the port it really bound."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, app: Starlette, url: str):
        self.server, self.thread, self.app, self.url = server, thread, app, url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def store(self) -> MesStore:
        return self.app.state.store

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningMes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(
    db_path: str | Path,
    token: str,
    publish: Publish | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    startup_timeout: float = 10.0,
) -> RunningMes:
    """Start the MES on ``port`` (0: any free port) and return once it answers /healthz."""
    app = create_app(db_path, token, publish, seed)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"mes-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the reference MES did not start on {host}:{port} (port in use? see the log above)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    running = RunningMes(server, thread, app, f"http://{host}:{bound}")
    while True:
        try:
            if requests.get(f"{running.url}/healthz", timeout=1).ok:
                return running
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"the reference MES at {running.url} did not answer /healthz in {startup_timeout}s")
        time.sleep(0.02)
