"""The MES REST client the pipeline uses: post events, read stock and the applied log, with clear errors.

GETs are retried on connection errors and 502/503/504 with backoff. POSTs are never retried
here: the sync worker owns retries (RabbitMQ retry queues), and the MES is idempotent by
transaction_id, so a POST whose answer was lost is simply posted again later.

The client can be shared between threads: each thread gets its own requests sessions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from invsync_pipeline.contract import InventoryEvent, instant_text
from invsync_pipeline.settings import Settings

TOKEN_ENV = "INVSYNC_MES_TOKEN"
BATCH_LIMIT = 5_000  # events per batch post (the reference MES's limit)


class MesError(Exception):
    """Any failure talking to the MES; ``url`` is the request URL (it never holds the token)."""

    retryable = False

    def __init__(self, message: str, url: str, status: int | None = None):
        self.url = url
        self.status = status
        super().__init__(message)


class MesUnavailable(MesError):
    """The MES did not answer, timed out or failed (5xx): try again later."""

    retryable = True


class MesRejected(MesError):
    """The MES refused the request (4xx): sending it again will not help."""

    def __init__(self, message: str, url: str, status: int, field: str | None, value: Any, rule: str | None):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(message, url, status)


class MesAuthError(MesError):
    """The MES refused the bearer token (401/403)."""


@dataclass(frozen=True)
class PostResult:
    """The MES's answer to a posted event. Every status means the MES has durably recorded it."""

    mes_transaction_id: str
    status: str  # applied | duplicate | not_applicable
    transaction_id: str


@dataclass(frozen=True)
class StockRow:
    location: str
    material_number: str
    unit: str
    quantity: Decimal


class MesApi(Protocol):
    """What invsync needs of an MES (docs/integrating.md). ``MesClient`` speaks it over the REST
    API of the reference MES (its OpenAPI document is the contract); a plant whose MES speaks
    something else writes an adapter with these methods and hands it in through ``MesResource``.

    Every post is idempotent by transaction_id: the same id again changes nothing and answers
    ``duplicate``. Stock "as of T" counts the movements stamped strictly before T. Errors:
    ``MesUnavailable`` (try again later), ``MesRejected`` (never will work), ``MesAuthError``."""

    def post_transaction(self, event: InventoryEvent) -> PostResult:
        """Apply one movement."""

    def post_transactions(self, events: list[InventoryEvent]) -> list[PostResult | MesError]:
        """Apply many, a result per event in order: a ``PostResult``, or the error for that event
        alone (``MesRejected``, or ``MesUnavailable`` when the MES cannot take it now). The sync
        worker's micro-batches and the bulk opening-balance load are such calls."""

    def stock(
        self,
        location: str | None = None,
        material_number: str | None = None,
        as_of: datetime | str | None = None,
        warehouse: str | None = None,
    ) -> Iterator[StockRow]:
        """Balances per (location, material_number, unit), now or as of an instant."""

    def applied_transactions(
        self, since: datetime | str | None = None, until: datetime | str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The applied log in applied order: the event's fields, mes_transaction_id, status,
        applied_at, and movements (location, material_number, unit, before, after)."""

    def find_transaction(self, transaction_id: str) -> dict[str, Any] | None:
        """One entry of the applied log, or None if the MES never got it."""

    def close(self) -> None:
        """Release connections."""


def instant_param(value: datetime | str | None, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous); use datetime.now(UTC)")
    return instant_text(value)


class MesClient:
    """A client of the MES REST API (the reference MES, or a real one with the same API)."""

    def __init__(
        self, base_url: str, token: str | None, timeout_seconds: float = 5, read_retries: int = 3, page_size: int = 1000
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_seconds = timeout_seconds
        self.read_retries = read_retries
        self.page_size = page_size
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str | None = None) -> MesClient:
        """Configured by ``mes:`` in the config file; the token from INVSYNC_MES_TOKEN.
        ``base_url`` points the same client settings at another MES (or MES namespace)."""
        mes = settings.mes
        return cls(
            base_url or mes.base_url,
            settings.mes_token,
            timeout_seconds=mes.timeout_seconds,
            read_retries=mes.read_retries,
            page_size=mes.page_size,
        )

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"MesClient({self.base_url!r})"

    def at(self, base_url: str) -> MesClient:
        """The same client (token, timeouts) against another MES or MES namespace."""
        return type(self)(base_url, self._token, self.timeout_seconds, self.read_retries, self.page_size)

    # --- sessions ---------------------------------------------------------------------------
    def _session(self, reads: bool) -> requests.Session:
        sessions = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = (self._new_session(self.read_retries), self._new_session(0))
        return sessions[0] if reads else sessions[1]

    def _new_session(self, retries: int) -> requests.Session:
        session = requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=0.2,
            backoff_max=5,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry if retries else 0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept"] = "application/json"
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
        with self._lock:
            self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()

    def __enter__(self) -> MesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- one request ------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        ndjson: bool = False,
    ) -> tuple[int, Any]:
        url = f"{self.base_url}{path}"
        params = {k: v for k, v in (params or {}).items() if v is not None}
        shown = requests.Request(method, url, params=params).prepare().url or url
        content_type = "application/x-ndjson" if ndjson else "application/json"
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            response = self._session(method == "GET").request(
                method, url, params=params, json=json_body, data=data, headers=headers, timeout=self.timeout_seconds
            )
        except requests.Timeout as exc:
            raise MesUnavailable(
                f"MES {method} {shown} timed out after {self.timeout_seconds}s; it may still apply the request "
                f"(retry: the MES is idempotent), or raise mes.timeout_seconds: {exc}",
                shown,
            ) from None
        except requests.RequestException as exc:
            raise MesUnavailable(
                f"MES {method} {shown} did not answer: {exc}. Check that the MES is running and that "
                "mes.base_url / INVSYNC_MES_URL points at it",
                shown,
            ) from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        status = response.status_code
        if status < 400:
            if body is None:
                raise MesError(f"MES {method} {shown} answered {status} without a JSON body", shown, status)
            return status, body
        detail = body if isinstance(body, dict) else {}
        reason = detail.get("error") or response.text[:200] or response.reason
        if status in (401, 403):
            hint = (
                f"no token is configured: set {TOKEN_ENV}"
                if not self._token
                else f"check that {TOKEN_ENV} holds the MES API token"
            )
            raise MesAuthError(
                f"MES {method} {shown} refused the request (HTTP {status}: {reason}); {hint}", shown, status
            )
        if status >= 500:
            raise MesUnavailable(
                f"MES {method} {shown} failed with HTTP {status}: {reason}; try again later", shown, status
            )
        raise MesRejected(
            f"MES {method} {shown} rejected the request (HTTP {status}): {reason}",
            shown,
            status,
            detail.get("field"),
            detail.get("value"),
            detail.get("rule"),
        )

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            _, body = self._request("GET", path, params={**params, "page_size": self.page_size, "page_token": token})
            yield from body["items"]
            token = body.get("next_page_token")
            if not token:
                return

    # --- the API ----------------------------------------------------------------------------
    def post_transaction(self, event: InventoryEvent) -> PostResult:
        """Post one event. Raises MesUnavailable (retry later), MesRejected (do not), MesAuthError."""
        _, body = self._request("POST", "/api/v1/inventory/transactions", data=event.to_body())
        return PostResult(body["mes_transaction_id"], body["status"], body["transaction_id"])

    def post_transactions(self, events: list[InventoryEvent]) -> list[PostResult | MesError]:
        """Post a batch: a result per event, in order; for an event the MES refused a MesRejected,
        for one it cannot take now (HTTP 5xx or 429 for that item) a MesUnavailable. The batch as
        a whole raises as one post does (MesUnavailable, MesAuthError)."""
        results: list[PostResult | MesError] = []
        url = "/api/v1/inventory/transactions/batch"
        for start in range(0, len(events), BATCH_LIMIT):
            chunk = events[start : start + BATCH_LIMIT]
            _, body = self._request("POST", url, data=b"\n".join(e.to_body() for e in chunk), ndjson=True)
            for event, item in zip(chunk, body["results"], strict=True):
                results.append(self._item_result(event, item, f"{self.base_url}{url}"))
        return results

    @staticmethod
    def _item_result(event: InventoryEvent, item: dict[str, Any], url: str) -> PostResult | MesError:
        status = item["http_status"]
        if status < 300:
            return PostResult(item["mes_transaction_id"], item["status"], event.transaction_id)
        said = f"MES answered HTTP {status} for {event.transaction_id} in a batch: {item.get('error')}"
        if status >= 500 or status == 429:
            return MesUnavailable(f"{said}; try again later", url, status)
        return MesRejected(said, url, status, item.get("field"), item.get("value"), item.get("rule"))

    def stock(
        self,
        location: str | None = None,
        material_number: str | None = None,
        as_of: datetime | str | None = None,
        warehouse: str | None = None,
    ) -> Iterator[StockRow]:
        """Stock balances, following every page. Pass ``as_of`` for a snapshot that holds still."""
        params = {
            "location": location,
            "material_number": material_number,
            "warehouse": warehouse,
            "as_of": instant_param(as_of, "as_of"),
        }
        for item in self._pages("/api/v1/inventory/stock", params):
            yield StockRow(item["location"], item["material_number"], item["unit"], Decimal(item["quantity"]))

    def applied_transactions(
        self, since: datetime | str | None = None, until: datetime | str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The MES's log in applied order, ``since <= applied_at < until`` (MES clock)."""
        params = {"since": instant_param(since, "since"), "until": instant_param(until, "until")}
        yield from self._pages("/api/v1/inventory/transactions", params)

    def find_transaction(self, transaction_id: str) -> dict[str, Any] | None:
        """The MES's record of one transaction_id, or None if it never arrived."""
        _, body = self._request("GET", "/api/v1/inventory/transactions", params={"transaction_id": transaction_id})
        return body["items"][0] if body["items"] else None

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}``; raises MesUnavailable when the MES is down or in an outage."""
        return self._request("GET", "/healthz")[1]
