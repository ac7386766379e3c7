"""Which way the event-driven path writes (shadow or live), the switch log, and workers pausing for a switch.

Kept in SQLite (``<home>/cutover.sqlite``): the CLI, every sync worker and the assets read it
from several processes, and sensors may too; none of them may need DuckDB for it. A switch is
``switching`` from the moment it is asked for until its seed is written; while a switch is
``switching`` every worker finishes its in-flight messages, stops consuming and says so here,
so the switch happens at a clean point of the stream.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from invsync_pipeline.contract import instant_of
from invsync_pipeline.settings import Settings

MODES = ("shadow", "live")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS switches (
    seq          INTEGER PRIMARY KEY,
    requested_at TEXT NOT NULL,
    completed_at TEXT,            -- the instant the new mode took over; NULL until then
    from_mode    TEXT NOT NULL,
    to_mode      TEXT NOT NULL,
    status       TEXT NOT NULL,   -- switching | done | aborted
    requested_by TEXT NOT NULL,
    note         TEXT,
    seeded_keys  INTEGER,
    copied_at    TEXT             -- the instant the copy's cycle counts carry (their ids derive from it)
);
CREATE TABLE IF NOT EXISTS seeds (
    at            TEXT NOT NULL,  -- the instant the seeded stock is of
    mode          TEXT NOT NULL,  -- the MES seeded: shadow | live
    material_types TEXT NOT NULL,
    seeded_by     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id  TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    seen_at    TEXT NOT NULL,
    paused_for INTEGER            -- the switch it paused for; NULL while it works
);
"""


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _instant(text: str | None) -> datetime | None:
    return instant_of(text) if text else None


class SwitchRefused(RuntimeError):
    """A switch that cannot start or finish; the message says why and what to do."""


@dataclass(frozen=True)
class Switch:
    seq: int
    requested_at: datetime
    completed_at: datetime | None
    from_mode: str
    to_mode: str
    status: str
    requested_by: str
    note: str | None
    seeded_keys: int | None
    copied_at: datetime | None = None


@dataclass(frozen=True)
class Mode:
    """The mode in force, the switch under way (if any) and the last finished switch (if any)."""

    mode: str
    switching: Switch | None
    last: Switch | None


class CutoverState:
    """The switch log and worker registry; cheap to open, safe from many processes."""

    def __init__(self, settings: Settings):
        self.initial_mode = settings.cutover.initial_mode
        self.path = settings.home / "cutover.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(switches)")}
        if "copied_at" not in columns:  # a cutover.sqlite from before the column existed
            try:
                self._db.execute("ALTER TABLE switches ADD COLUMN copied_at TEXT")
            except sqlite3.OperationalError as exc:  # another process added it just now
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CutoverState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------------
    def _switches(self, where: str = "", params: tuple = ()) -> list[Switch]:
        rows = self._db.execute(f"SELECT * FROM switches {where} ORDER BY seq", params).fetchall()
        return [
            Switch(r[0], _instant(r[1]), _instant(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], _instant(r[9]))  # type: ignore[arg-type]
            for r in rows
        ]

    def current(self) -> Mode:
        done = self._switches("WHERE status = 'done'")
        switching = self._switches("WHERE status = 'switching'")
        last = done[-1] if done else None
        return Mode(last.to_mode if last else self.initial_mode, switching[-1] if switching else None, last)

    def mode_at(self, moment: datetime) -> str:
        """The mode that was in force at ``moment`` (wall clock): for reading a past hour's MES."""
        done = [s for s in self._switches("WHERE status = 'done'") if s.completed_at and s.completed_at <= moment]
        return done[-1].to_mode if done else self.initial_mode

    def history(self) -> list[Switch]:
        return self._switches()

    def last_copy_into(self, mode: str, before: datetime) -> datetime | None:
        """The newest instant, before ``before``, whose stock was copied into the ``mode`` MES
        wholesale: a switch to ``mode`` (its copy) or a seed of it."""
        copies = [s.copied_at for s in self._switches("WHERE status = 'done' AND to_mode = ?", (mode,))
                  if s.copied_at is not None and s.copied_at < before]  # fmt: skip
        seeds = self._db.execute("SELECT at FROM seeds WHERE mode = ?", (mode,)).fetchall()
        copies += [at for (text,) in seeds if (at := _instant(text)) is not None and at < before]
        return max(copies, default=None)

    def record_seed(self, mode: str, at: datetime, material_types: tuple[str, ...], seeded_by: str) -> None:
        row = (_text(at), mode, ",".join(material_types), seeded_by)
        self._db.execute("INSERT INTO seeds VALUES (?, ?, ?, ?)", row)

    # --- switching ------------------------------------------------------------------------------
    def begin(self, to_mode: str, requested_by: str, note: str | None = None) -> Switch:
        if to_mode not in MODES:
            raise SwitchRefused(f"mode {to_mode!r} is not one of {MODES}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            now = self.current()
            if now.switching is not None:
                raise SwitchRefused(
                    f"switch {now.switching.seq} ({now.switching.from_mode} -> {now.switching.to_mode}) is still "
                    "under way; wait for it, or `invsync cutover abort` it if its command died"
                )
            if now.mode == to_mode:
                raise SwitchRefused(f"the event-driven path is already {to_mode}; nothing to switch")
            cursor = self._db.execute(
                "INSERT INTO switches (requested_at, from_mode, to_mode, status, requested_by, note) "
                "VALUES (?, ?, ?, 'switching', ?, ?)",
                (_text(datetime.now(UTC)), now.mode, to_mode, requested_by, note),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._switches("WHERE seq = ?", (cursor.lastrowid,))[0]

    def complete(self, seq: int, seeded_keys: int, copied_at: datetime | None = None) -> Switch:
        self._db.execute(
            "UPDATE switches SET status = 'done', completed_at = ?, seeded_keys = ?, copied_at = ? "
            "WHERE seq = ? AND status = 'switching'",
            (_text(datetime.now(UTC)), seeded_keys, _text(copied_at) if copied_at else None, seq),
        )
        return self._switches("WHERE seq = ?", (seq,))[0]

    def abort(self, seq: int, why: str) -> None:
        self._db.execute(
            "UPDATE switches SET status = 'aborted', completed_at = ?, note = coalesce(note || '; ', '') || ? "
            "WHERE seq = ? AND status = 'switching'",
            (_text(datetime.now(UTC)), f"aborted: {why}", seq),
        )

    # --- workers --------------------------------------------------------------------------------
    def heartbeat(self, worker_id: str, paused_for: int | None) -> None:
        self._db.execute(
            "INSERT INTO workers VALUES (?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET "
            "seen_at = excluded.seen_at, paused_for = excluded.paused_for",
            (worker_id, socket.gethostname(), os.getpid(), _text(datetime.now(UTC)), paused_for),
        )

    def leave(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self, alive_within: float = 10.0) -> list[tuple[str, str, int, int | None]]:
        """(worker_id, host, pid, paused_for) of every worker seen in the last ``alive_within`` s."""
        since = _text(datetime.now(UTC) - timedelta(seconds=alive_within))
        return self._db.execute(
            "SELECT worker_id, host, pid, paused_for FROM workers WHERE seen_at >= ? ORDER BY worker_id", (since,)
        ).fetchall()

    def wait_until_paused(self, seq: int, timeout: float, alive_within: float = 10.0) -> int:
        """Wait until every live worker paused for switch ``seq``; returns how many did."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers(alive_within)
            busy = [w for w in workers if w[3] != seq]
            if not busy:
                return len(workers)
            if time.monotonic() > deadline:
                names = ", ".join(f"{w[0]} (host {w[1]}, pid {w[2]})" for w in busy)
                raise SwitchRefused(
                    f"sync worker(s) {names} did not pause within {timeout:.0f} s; the switch was aborted and "
                    "nothing changed. Check that they are not stuck on a slow MES (invsync mes faults) and retry"
                )
            time.sleep(0.1)
