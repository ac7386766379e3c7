"""`invsync review serve`: the review page, where supervisors decide held corrections.

It reads and writes the review store only, never DuckDB, so it answers while a run writes.
Sign-in is HTTP basic auth against INVSYNC_REVIEW_PASSWORD (any user name; it fills in the
supervisor's name). A browser resends basic-auth credentials on requests other sites trigger,
so every POST carries a token only this page hands out, and a foreign Origin is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from invsync_pipeline.recon.corrections import ReviewError
from invsync_pipeline.recon.review import approve, reject
from invsync_pipeline.recon.review_store import HELD, ReviewStore
from invsync_pipeline.review_page.html import e, item_page, queue_page
from invsync_pipeline.review_page.html import page as page_of
from invsync_pipeline.settings import ConfigError, Settings

_REALM = 'Basic realm="invsync review", charset="UTF-8"'


class _BasicAuth(BaseHTTPMiddleware):
    def __init__(self, app: object, password: str) -> None:
        super().__init__(app)
        self.password = password.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        user = _user(request.headers.get("authorization", ""), self.password)
        if user is None:
            return PlainTextResponse("sign in with the review password (INVSYNC_REVIEW_PASSWORD)", 401,
                                     headers={"WWW-Authenticate": _REALM})  # fmt: skip
        request.state.user = user
        return await call_next(request)


def _user(header: str, password: bytes) -> str | None:
    """The user name of valid basic-auth credentials, else None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, given = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name if hmac.compare_digest(given.encode(), password) else None


def create_app(settings: Settings, store: ReviewStore | None = None) -> Starlette:
    """The page on ``settings``' review store; refuses to start without a password."""
    password = settings.review_password
    if not password:
        raise ConfigError("the review page needs a password: set INVSYNC_REVIEW_PASSWORD in the environment "
                          "(supervisors sign in with it)")  # fmt: skip
    store = store or ReviewStore.from_settings(settings)
    secret = secrets.token_bytes(32)  # new tokens each start: a form from before a restart is refused

    def csrf(user: str) -> str:
        return hmac.new(secret, user.encode(), hashlib.sha256).hexdigest()

    def queue(request: Request) -> HTMLResponse:
        q = request.query_params
        chosen = {k: q.get(k) or None for k in ("plant", "material_type", "cause", "age", "status")}
        status = chosen["status"] or HELD
        try:
            age = float(chosen["age"]) if chosen["age"] else None
        except ValueError:
            return HTMLResponse(f"age={chosen['age']!r}: give hours as a number", 400)
        items = store.queue(None if status == "all" else status, plant=chosen["plant"],
                            material_type=chosen["material_type"], cause=chosen["cause"],
                            min_age_hours=age)  # fmt: skip
        return HTMLResponse(queue_page(items, store.choices(), chosen))

    def show(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
        cid = request.path_params["correction_id"]
        try:
            item = store.item(cid)
        except ReviewError as exc:
            return HTMLResponse(page_of("not found", f"<p>{e(exc)}</p>"), 404)
        page = item_page(item, store.trail(cid), csrf(request.state.user), request.state.user, error)
        return HTMLResponse(page, status_code)

    async def decide(request: Request) -> Response:
        cid = request.path_params["correction_id"]
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            return PlainTextResponse(f"origin {origin!r} is not this page; decide from the review page itself", 403)
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", ""), csrf(request.state.user)):
            return PlainTextResponse("the form is stale or not from this page: reload the item and decide again", 403)
        decision, by, reason = form.get("decision"), form.get("by", ""), form.get("reason", "").strip()
        try:
            if decision not in ("approve", "reject"):
                raise ReviewError(f"decision={decision!r}: choose approve or reject")
            if not by.strip():
                raise ReviewError("your name is required: it goes into the audit trail with the decision")
            if not reason:
                raise ReviewError("a reason is required: it goes into the audit trail")
            act = approve if decision == "approve" else reject
            await run_in_threadpool(act, store, cid, by, reason)
        except ReviewError as exc:
            return await run_in_threadpool(show, request, str(exc), 409)
        return RedirectResponse(f"/items/{quote(cid, safe='')}", 303)

    return Starlette(
        routes=[
            Route("/", queue),
            Route("/items/{correction_id}", show),
            Route("/items/{correction_id}/decision", decide, methods=["POST"]),
        ],
        middleware=[Middleware(_BasicAuth, password=password)],
    )
