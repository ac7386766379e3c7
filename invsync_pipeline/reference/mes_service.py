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

from invsync_pipeline.contract import ContractViolation, InventoryEvent, instant_text, parse_event, try_parse_event
from invsync_pipeline.reference.mes_http import BearerAuth, FaultInjector, error_response, jsonable
from invsync_pipeline.reference.mes_openapi import openapi_document
from invsync_pipeline.reference.mes_production import production_routes
from invsync_pipeline.reference.mes_store import BadRequest, MesStore, TransactionConflict, parse_instant

log = logging.getLogger(__name__)

Publish = Callable[[InventoryEvent], None]

MAX_PAGE_SIZE = 10_000
MAX_BATCH = 5_000
_NAMESPACE = re.compile(r"[a-z0-9_-]{1,32}")


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
        if (locked := faults.locked(event.location)) is not None:
            return error_response(503, locked, "location", event.location, "must not be under a physical count")
        recorded = await run_in_threadpool(store_for(request).record, event)
        return JSONResponse(recorded.body(), status_code=201 if recorded.status == "applied" else 200)

    async def post_batch(request: Request) -> Response:
        # One event per line (NDJSON), each read by the contract on its own, as a single post is;
        # the valid ones are recorded in one database transaction. A result per line, in order.
        lines = [line for line in (await request.body()).split(b"\n") if line.strip()]
        if len(lines) > MAX_BATCH:
            return error_response(422, f"a batch holds at most {MAX_BATCH} events", "body", len(lines),
                                  f"send at most {MAX_BATCH} lines")  # fmt: skip
        parsed: list[InventoryEvent | ContractViolation] = [try_parse_event(line) for line in lines]
        locked = {i: why for i, item in enumerate(parsed)
                  if isinstance(item, InventoryEvent) and (why := faults.locked(item.location))}  # fmt: skip
        valid = [item for i, item in enumerate(parsed) if isinstance(item, InventoryEvent) and i not in locked]
        recorded = iter(await run_in_threadpool(store_for(request).record_many, valid) if valid else [])
        results = []
        for i, item in enumerate(parsed):
            if i in locked:  # an event the MES cannot take now: the client retries it later
                results.append({"http_status": 503, "transaction_id": getattr(item, "transaction_id", None),
                                "error": locked[i], "field": "location", "value": getattr(item, "location", None),
                                "rule": "must not be under a physical count"})  # fmt: skip
                continue
            outcome = item if isinstance(item, ContractViolation) else next(recorded)
            if isinstance(outcome, BadRequest | ContractViolation):
                results.append({
                    "http_status": 409 if isinstance(outcome, TransactionConflict) else 422,
                    "transaction_id": getattr(item, "transaction_id", None), "error": str(outcome),
                    "field": outcome.field, "value": jsonable(outcome.value), "rule": outcome.rule,
                })  # fmt: skip
            else:
                results.append({"http_status": 201 if outcome.status == "applied" else 200, **outcome.body()})
        return JSONResponse({"results": results})

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
        stamp = instant_text(as_of or datetime.now(UTC))
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
        ("/api/v1/inventory/transactions/batch", faulted(post_batch), ["POST"]),
        ("/api/v1/inventory/transactions", faulted(get_transactions), ["GET"]),
        ("/api/v1/inventory/stock", faulted(get_stock), ["GET"]),
    ]
    routes = [
        *(Route(path, endpoint, methods=methods) for path, endpoint, methods in inventory),
        *(Route("/ns/{namespace}" + path, endpoint, methods=methods) for path, endpoint, methods in inventory),
        *production_routes(store, publish),
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
