"""The reference MES's SQLite storage: stock balances, the applied-transaction log and backflush outbox.

Quantities are stored as integers in micro-units (the contract allows at most 6 decimals), so
sums in SQL are exact. Every applied transaction records, per stock key it touched, the balance
before and after; that makes ``as_of`` stock exact even across cycle counts, which set a balance
rather than move it.

As-of semantics (documented in the OpenAPI too): stock as of T is, per (location, material,
unit), the sum of the effects of every movement whose *event timestamp* (when the movement
happened, the same clock ERP's as-of uses) is at or before T. An effect is ``after - before`` as
actually applied, so a cycle count contributes the correction it made. When events arrive in
timestamp order this is exactly the balance the MES held at T; a late event (older timestamp,
applied later) is counted at its event time, like ERP does.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from invsync_pipeline.contract import NO_HORIZON, InventoryEvent, parse_event

_MICRO = 10**6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    seq                INTEGER PRIMARY KEY,
    transaction_id     TEXT NOT NULL UNIQUE,
    mes_transaction_id TEXT NOT NULL UNIQUE,
    status             TEXT NOT NULL,            -- applied | not_applicable
    applied_at         TEXT NOT NULL,            -- server clock, UTC, fixed width: sorts as text
    event_ts           TEXT NOT NULL,
    event              TEXT NOT NULL             -- the contract message, canonical form
);
CREATE INDEX IF NOT EXISTS transactions_applied_at ON transactions (applied_at);
CREATE TABLE IF NOT EXISTS movements (
    seq             INTEGER NOT NULL REFERENCES transactions (seq),
    location        TEXT NOT NULL,
    material_number TEXT NOT NULL,
    unit            TEXT NOT NULL,
    event_ts        TEXT NOT NULL,
    before_micro    INTEGER NOT NULL,
    after_micro     INTEGER NOT NULL,
    PRIMARY KEY (seq, location, material_number, unit)
);
CREATE INDEX IF NOT EXISTS movements_key_ts ON movements (location, material_number, unit, event_ts);
CREATE TABLE IF NOT EXISTS stock (
    location        TEXT NOT NULL,
    material_number TEXT NOT NULL,
    unit            TEXT NOT NULL,
    quantity_micro  INTEGER NOT NULL,
    PRIMARY KEY (location, material_number, unit)
);
CREATE TABLE IF NOT EXISTS unpublished (
    transaction_id TEXT PRIMARY KEY REFERENCES transactions (transaction_id),
    recorded_at    TEXT NOT NULL,
    last_error     TEXT
);
"""


class BadRequest(ValueError):
    """A query parameter or body field the store cannot use; the service answers 400 with it."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}={value!r}: {rule}")


class TransactionConflict(BadRequest):
    """A transaction_id that was already recorded for a different event."""


@dataclass(frozen=True)
class Recorded:
    """What the store did with a posted event."""

    mes_transaction_id: str
    status: str  # applied | not_applicable | duplicate
    transaction_id: str
    applied_at: str
    original_status: str
    event: InventoryEvent

    def body(self) -> dict[str, Any]:
        """The JSON answer to the post."""
        body = {"mes_transaction_id": self.mes_transaction_id, "status": self.status,
                "transaction_id": self.transaction_id, "applied_at": self.applied_at}  # fmt: skip
        if self.status == "duplicate":
            body["original_status"] = self.original_status
        return body


def utc_text(moment: datetime) -> str:
    """A fixed-width UTC text form, so SQLite text comparison is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(field: str, value: str) -> datetime:
    """An RFC 3339 query parameter; a '+' that a URL turned into a space is forgiven."""
    text = value.strip().replace(" ", "+").replace("z", "Z").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequest(field, value, "must be an RFC 3339 date-time with an offset, e.g. 2026-11-24T11:00:00Z")
    return moment


def micro(quantity: Decimal) -> int:
    return int(quantity.scaleb(6).to_integral_exact())


def decimal_text(quantity_micro: int) -> str:
    return format(Decimal(quantity_micro).scaleb(-6).normalize(), "f")


def encode_token(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_token(token: str, length: int) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != length:
        raise BadRequest("page_token", token, "is not a token this service issued; start again without page_token")
    return key


class MesStore:
    """SQLite storage; safe to share between threads (one connection per thread, writes serialized)."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) where they matter.
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- writes -----------------------------------------------------------------------------
    def record(
        self, event: InventoryEvent, *, unpublished: bool = False, ignore_timestamp_on_repeat: bool = False
    ) -> Recorded:
        """Apply and record an event once; a repeat of its transaction_id changes nothing.

        ``ignore_timestamp_on_repeat`` is for events whose timestamp the MES stamped itself (a
        backflush sent again without one), so the retry is a duplicate, not a conflict."""
        (outcome,) = self.record_many(
            [event], unpublished=unpublished, ignore_timestamp_on_repeat=ignore_timestamp_on_repeat
        )
        if isinstance(outcome, TransactionConflict):
            raise outcome
        return outcome

    def record_many(
        self, events: list[InventoryEvent], *, unpublished: bool = False, ignore_timestamp_on_repeat: bool = False
    ) -> list[Recorded | TransactionConflict]:
        """``record`` for each event, in one database transaction: per event its Recorded, or the
        conflict that refused it (a transaction_id already recorded for a different movement)."""
        conn = self._conn()
        # IMMEDIATE takes the write lock before the duplicate checks, so two concurrent posts of
        # one transaction_id cannot both pass them: the second waits and then sees the first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._record_one(conn, e, unpublished, ignore_timestamp_on_repeat) for e in events]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _record_one(
        self, conn: sqlite3.Connection, event: InventoryEvent, unpublished: bool, ignore_timestamp_on_repeat: bool
    ) -> Recorded | TransactionConflict:
        row = conn.execute(
            "SELECT mes_transaction_id, status, applied_at, event FROM transactions WHERE transaction_id = ?",
            (event.transaction_id,),
        ).fetchone()
        if row is not None:
            original = parse_event(row[3], limits=NO_HORIZON)  # recorded: its age is history
            compared = (
                event.model_copy(update={"timestamp": original.timestamp}) if ignore_timestamp_on_repeat else event
            )
            if original != compared:
                return TransactionConflict(
                    "transaction_id",
                    event.transaction_id,
                    f"was already recorded as {row[0]} for a different event; "
                    "a transaction_id must identify exactly one movement",
                )
            return Recorded(row[0], "duplicate", event.transaction_id, row[2], row[1], original)
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM transactions").fetchone()[0]
        mes_id = f"MES-{seq:010d}"
        applied_at = utc_text(datetime.now(UTC))
        # A correction aimed at the ERP is recorded so the log shows it arrived, not applied.
        applies = not (event.source_system == "RECON" and event.target_system == "ERP")
        status = "applied" if applies else "not_applicable"
        conn.execute(
            "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, event.transaction_id, mes_id, status, applied_at, utc_text(event.timestamp),
             json.dumps(event.to_message())),
        )  # fmt: skip
        if applies:
            self._apply(conn, seq, event)
        if unpublished:
            conn.execute("INSERT INTO unpublished VALUES (?, ?, NULL)", (event.transaction_id, applied_at))
        return Recorded(mes_id, status, event.transaction_id, applied_at, status, event)

    def _apply(self, conn: sqlite3.Connection, seq: int, event: InventoryEvent) -> None:
        q = micro(event.quantity)
        kind = event.transaction_type
        if kind == "transfer":
            changes = [(event.location, -q, False), (event.to_location, q, False)]
        elif kind == "issue":
            changes = [(event.location, -q, False)]
        elif kind == "cycle_count":
            changes = [(event.location, q, True)]
        else:  # receipt, and adjustment whose quantity is already signed
            changes = [(event.location, q, False)]
        ts = utc_text(event.timestamp)
        for location, amount, sets_balance in changes:
            key = (location, event.material_number, event.unit)
            row = conn.execute(
                "SELECT quantity_micro FROM stock WHERE location = ? AND material_number = ? AND unit = ?", key
            ).fetchone()
            before = row[0] if row else 0
            # Negative balances are kept, not refused: real MES allow them, and reconciliation
            # is the place that explains them.
            after = amount if sets_balance else before + amount
            conn.execute(
                "INSERT INTO stock VALUES (?, ?, ?, ?) ON CONFLICT (location, material_number, unit) "
                "DO UPDATE SET quantity_micro = excluded.quantity_micro",
                (*key, after),
            )
            conn.execute("INSERT INTO movements VALUES (?, ?, ?, ?, ?, ?, ?)", (seq, *key, ts, before, after))

    def is_unpublished(self, transaction_id: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM unpublished WHERE transaction_id = ?", (transaction_id,))
        return row.fetchone() is not None

    def mark_published(self, transaction_id: str) -> None:
        self._conn().execute("DELETE FROM unpublished WHERE transaction_id = ?", (transaction_id,))

    def mark_publish_failed(self, transaction_id: str, error: str) -> None:
        self._conn().execute("UPDATE unpublished SET last_error = ? WHERE transaction_id = ?", (error, transaction_id))

    # --- reads ------------------------------------------------------------------------------
    def stock(
        self,
        *,
        location: str | None = None,
        warehouse: str | None = None,
        material_number: str | None = None,
        as_of: datetime | None = None,
        page_size: int = 1000,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, str]], str | None]:
        """One page of stock, ordered by (location, material_number, unit); keyset-paginated."""
        where, params = [], []
        if location is not None:
            where.append("location = ?")
            params.append(location)
        if warehouse is not None:
            where.append("substr(location, 1, length(?) + 1) = ? || '/'")
            params += [warehouse, warehouse]
        if material_number is not None:
            where.append("material_number = ?")
            params.append(material_number)
        if page_token:
            where.append("(location, material_number, unit) > (?, ?, ?)")
            params += decode_token(page_token, 3)
        if as_of is None:
            sql = "SELECT location, material_number, unit, quantity_micro FROM stock"
        else:
            # Strictly before: a movement stamped exactly on an hour boundary belongs to the hour it
            # starts, as in the ERP's as-of stock and the hourly partitions.
            where.append("event_ts < ?")
            params.append(utc_text(as_of))
            sql = "SELECT location, material_number, unit, SUM(after_micro - before_micro) FROM movements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if as_of is not None:
            sql += " GROUP BY location, material_number, unit"
        sql += " ORDER BY location, material_number, unit LIMIT ?"
        rows = self._conn().execute(sql, (*params, page_size + 1)).fetchall()
        items = [
            {"location": r[0], "material_number": r[1], "unit": r[2], "quantity": decimal_text(r[3])}
            for r in rows[:page_size]
        ]
        next_token = encode_token(list(rows[page_size - 1][:3])) if len(rows) > page_size else None
        return items, next_token

    def transactions(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        transaction_id: str | None = None,
        page_size: int = 1000,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the recorded log in applied order; since/until bound ``applied_at`` [since, until)."""
        where, params = [], []
        if since is not None:
            where.append("applied_at >= ?")
            params.append(utc_text(since))
        if until is not None:
            where.append("applied_at < ?")
            params.append(utc_text(until))
        if transaction_id is not None:
            where.append("transaction_id = ?")
            params.append(transaction_id)
        if page_token:
            (after_seq,) = decode_token(page_token, 1)
            where.append("seq > ?")
            params.append(after_seq)
        sql = "SELECT seq, transaction_id, mes_transaction_id, status, applied_at, event FROM transactions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq LIMIT ?"
        conn = self._conn()
        fetched = conn.execute(sql, (*params, page_size + 1)).fetchall()
        rows = fetched[:page_size]
        movements: dict[int, list[dict[str, str]]] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for seq, loc, mat, unit, before, after in conn.execute(
                "SELECT seq, location, material_number, unit, before_micro, after_micro FROM movements "
                f"WHERE seq IN ({marks}) ORDER BY seq, rowid",
                [r[0] for r in rows],
            ):
                movements.setdefault(seq, []).append(
                    {
                        "location": loc,
                        "material_number": mat,
                        "unit": unit,
                        "before": decimal_text(before),
                        "after": decimal_text(after),
                    }
                )
        items = [
            {
                **json.loads(r[5]),
                "mes_transaction_id": r[2],
                "status": r[3],
                "applied_at": r[4],
                "movements": movements.get(r[0], []),
            }
            for r in rows
        ]
        return items, encode_token([rows[-1][0]]) if len(fetched) > page_size else None

    def unpublished(self) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT t.event, t.mes_transaction_id, u.recorded_at, u.last_error FROM unpublished u "
                "JOIN transactions t USING (transaction_id) ORDER BY t.seq"
            )
            .fetchall()
        )
        return [
            {"event": json.loads(r[0]), "mes_transaction_id": r[1], "recorded_at": r[2], "last_error": r[3]}
            for r in rows
        ]
