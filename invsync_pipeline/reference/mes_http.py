"""HTTP plumbing of the reference MES: injected faults, bearer-token auth and JSON error bodies."""

from __future__ import annotations

import hmac
import json
import random
import threading
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})


class OutageWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> OutageWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Faults(BaseModel):
    """Faults injected into the inventory endpoints."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(default=0.0, ge=0, le=1)
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    outage: bool = False
    outage_windows: list[OutageWindow] = Field(default_factory=list)
    # Share of posts the MES applies and then answers 504, as if a gateway timed out: the
    # "applied, but the answer was lost" case a client must look up before it tries again.
    lost_answer_rate: float = Field(default=0.0, ge=0, le=1)
    # Locations under a physical count: the MES takes no movement there for now (503, per item
    # in a batch) and takes the same posts once the count is done. The per-item "try again" case.
    locked_locations: list[str] = Field(default_factory=list, max_length=1000)

    def in_outage(self, now: datetime) -> bool:
        return self.outage or any(w.start <= now < w.end for w in self.outage_windows)


class FaultInjector:
    """The faults in force, kept in memory: restarting the MES clears them."""

    def __init__(self, seed: int):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # seeded, so a test's sequence of failures is repeatable
        self.faults = Faults()

    def update(self, patch: dict[str, Any]) -> Faults:
        with self._lock:
            self.faults = Faults.model_validate({**self.faults.model_dump(), **patch})
            return self.faults

    def decide(self) -> tuple[float, int | None, str]:
        """(latency seconds, status to answer instead or None, why)."""
        with self._lock:
            faults = self.faults
            draw = self._rng.random() if faults.error_rate > 0 else 1.0
        if faults.in_outage(datetime.now(UTC)):
            return faults.latency_ms / 1000, 503, "the MES is in an outage (injected fault)"
        if draw < faults.error_rate:
            return faults.latency_ms / 1000, 500, f"internal error (injected fault, error_rate={faults.error_rate})"
        return faults.latency_ms / 1000, None, ""

    def locked(self, location: str) -> str | None:
        """Why a movement at ``location`` cannot be taken now, or None."""
        if location in self.faults.locked_locations:
            return f"location {location} is locked for a physical count (injected fault); try again later"
        return None

    def lose_answer(self) -> bool:
        """Whether this applied post's answer is lost (``lost_answer_rate``)."""
        with self._lock:
            return self.faults.lost_answer_rate > 0 and self._rng.random() < self.faults.lost_answer_rate


def jsonable(value: Any) -> Any:
    if type(value).__name__ == "_Missing":  # the contract's marker for an absent field
        return None
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def error_response(
    status: int,
    error: str,
    field: str | None = None,
    value: Any = None,
    rule: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body.update(field=field, value=jsonable(value), rule=rule)
    return JSONResponse(body, status_code=status, headers=headers)


class BearerAuth:
    """Every path but the public ones needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            # Constant-time comparison, so response timing does not leak the token.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(b"Bearer " + credential.strip(), self.expected):
                problem = "missing" if not given else "invalid"
                response = error_response(
                    401,
                    f"{problem} bearer token",
                    "Authorization",
                    None,
                    "send 'Authorization: Bearer <token>' with the MES API token (INVSYNC_MES_TOKEN)",
                    headers={"WWW-Authenticate": 'Bearer realm="mes"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
