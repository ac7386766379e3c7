"""The staged event log: append-only JSON Lines segments on disk, one folder per UTC hour.

A segment is written to a temporary file, fsynced, renamed into place and its folder fsynced,
so a segment either exists whole or not at all. The drain acks a message only after the
segment holding it exists, which makes the log the durable copy of everything the ledger tap
carried. Segments are never changed; a redelivered message may appear in two segments, and
readers de-duplicate by transaction_id.

Layout under ``staged/``::

    events/2026-11-24T15/<segment_id>.jsonl      valid events whose timestamp falls in that hour
    events/2026-11-24T15/<segment_id>.parquet    the same rows, columnar (see below)
    quarantine/<segment_id>.jsonl                invalid messages, kept whole, with the reason

Segment ids start with a nanosecond timestamp, so sorting them sorts them by write time.

The JSON Lines segment is the durable copy, the one a message is acked after. Beside it the
drain writes a Parquet twin after the ack: the same rows, typed as staging reads them
(sql/staging/segment_rows.sql), about 20 times smaller and cheaper to read. Readers take the
twin when it is there and the JSON Lines segment when it is not (a crash between the two, or a
segment older than twins):
``columnar_twins`` writes the missing ones for any segments (``invsync staged columnar``). A twin
is written to a temporary file, fsynced and renamed, so it too is whole or absent.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from invsync_pipeline.contract import instant_text
from invsync_pipeline.messaging.amqp_headers import as_json, headers_as_json
from invsync_pipeline.partitions import PARTITION_FORMAT
from invsync_pipeline.warehouse import sql

HOUR_DIR_FORMAT = "%Y-%m-%dT%H"


def hour_dir_name(partition_key: str) -> str:
    return datetime.strptime(partition_key, PARTITION_FORMAT).strftime(HOUR_DIR_FORMAT)


def partition_key_of_dir(name: str) -> str:
    return datetime.strptime(name, HOUR_DIR_FORMAT).strftime(PARTITION_FORMAT)


def new_segment_id() -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class QuarantinedMessage:
    """An invalid message and why; the body is kept whole (base64, since it may not be text)."""

    received_at: str
    routing_key: str
    message_id: str | None
    field: str
    value: str
    rule: str
    body: bytes
    headers: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        """The quarantine line. Never fails on what a sender wrote: odd header types, deep
        tables, text that is not UTF-8 are shown as far as they can be; the body stays whole."""
        return {
            "received_at": self.received_at,
            "routing_key": as_json(self.routing_key),
            "message_id": as_json(self.message_id),
            "field": as_json(self.field),
            "value": as_json(self.value),
            "rule": as_json(self.rule),
            "reason": as_json(f"{self.field}={self.value}: {self.rule}"),
            "body_b64": base64.b64encode(self.body).decode("ascii"),
            "body_bytes": len(self.body),
            "headers": headers_as_json(self.headers),
        }


class StagedEventLog:
    """Writes and lists segments; it never rewrites one."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.events_dir = self.root / "events"
        self.quarantine_dir = self.root / "quarantine"

    # --- writing -------------------------------------------------------------------------------
    def write_events(self, rows_by_partition: dict[str, list[str]], segment_id: str) -> list[Path]:
        """Write one segment per hour, each atomically and durably. Rows are JSON lines."""
        written = []
        for partition_key, lines in rows_by_partition.items():
            folder = self.events_dir / hour_dir_name(partition_key)
            written.append(self._write_atomic(folder, f"{segment_id}.jsonl", lines))
        return written

    def write_quarantine(self, messages: Iterable[QuarantinedMessage], segment_id: str) -> Path | None:
        lines = [_quarantine_line(m) for m in messages]
        if not lines:
            return None
        return self._write_atomic(self.quarantine_dir, f"{segment_id}.jsonl", lines)

    def _write_atomic(self, folder: Path, name: str, lines: list[str]) -> Path:
        new_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        tmp = folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        if new_folder:
            _fsync_dir(folder.parent)
        return final

    # --- reading -------------------------------------------------------------------------------
    def segments(self, partition_key: str) -> list[Path]:
        """The segments of one hour, oldest first (temporary files of a crashed write excluded)."""
        folder = self.events_dir / hour_dir_name(partition_key)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == ".jsonl" and not p.name.startswith("."))

    def readable_segments(self, partition_key: str) -> list[Path]:
        """The segments of one hour, oldest first, each as its Parquet twin when it has one, else
        as its JSON Lines file: the same rows either way, the twin faster to read."""
        folder = self.events_dir / hour_dir_name(partition_key)
        twins = {p for p in folder.glob("*.parquet") if not p.name.startswith(".")}
        return [
            p.with_suffix(".parquet") if p.with_suffix(".parquet") in twins else p for p in self.segments(partition_key)
        ]

    def partitions_with_segments_after(self, segment_id: str) -> dict[str, str]:
        """For every hour holding a segment newer than ``segment_id``: its newest segment id."""
        newest: dict[str, str] = {}
        if not self.events_dir.is_dir():
            return newest
        for folder in self.events_dir.iterdir():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                name = entry.name
                if name.startswith(".") or not name.endswith(".jsonl"):
                    continue
                seg = name[: -len(".jsonl")]
                if seg > segment_id:
                    key = partition_key_of_dir(folder.name)
                    if seg > newest.get(key, ""):
                        newest[key] = seg
        return newest

    def quarantine_segments(self) -> list[Path]:
        if not self.quarantine_dir.is_dir():
            return []
        return sorted(p for p in self.quarantine_dir.iterdir() if p.suffix == ".jsonl" and not p.name.startswith("."))

    def quarantined(self) -> list[dict[str, Any]]:
        rows = []
        for path in self.quarantine_segments():
            with open(path, encoding="utf-8") as fh:
                rows.extend(json.loads(line) for line in fh if line.strip())
        return rows


def _quarantine_line(message: QuarantinedMessage) -> str:
    try:
        return json.dumps(message.to_row(), separators=(",", ":"))
    except Exception as exc:  # noqa: BLE001 - quarantining never fails on a message's content
        # Whatever broke the full line, the body and the reason are still kept, whole.
        return json.dumps(
            {
                "received_at": message.received_at,
                "field": "body",
                "value": "",
                "rule": f"quarantined without its headers ({type(exc).__name__})",
                "reason": f"body: quarantined without its headers ({type(exc).__name__})",
                "body_b64": base64.b64encode(bytes(message.body)).decode("ascii"),
                "body_bytes": len(message.body),
                "headers": {},
            },
            separators=(",", ":"),
        )


def columnar_twins(segments: Iterable[Path], con: duckdb.DuckDBPyConnection | None = None) -> list[Path]:
    """Write the Parquet twin of each JSON Lines event segment that lacks one; the twins written.

    A twin holds the segment's rows as staging reads them (sql/staging/segment_rows.sql: typed,
    with the hour of the folder and the segment id), so staging reads it as is. One DuckDB
    statement per hour folder writes a file per segment into a temporary folder; each file is
    fsynced and renamed beside its segment. The segment stays the durable copy: a twin missing
    (or a temporary file left by a crash) costs speed, never a row. ``con``: an in-memory DuckDB
    connection from ``twin_writer`` to reuse (opening one costs about what a small twin does)."""
    by_folder: dict[Path, list[Path]] = {}
    for path in segments:
        path = Path(path)
        if path.suffix == ".jsonl" and not path.with_suffix(".parquet").exists():
            by_folder.setdefault(path.parent, []).append(path)
    written: list[Path] = []
    if not by_folder:
        return written
    own = con is None
    con = con or twin_writer()
    try:
        for folder, paths in sorted(by_folder.items()):
            hour = datetime.strptime(folder.name, HOUR_DIR_FORMAT).replace(tzinfo=UTC)
            tmp = folder / f".columnar-{uuid.uuid4().hex[:8]}.tmp"
            try:
                # The temporary folder's name is ours (a uuid), not input; files and hour are bound.
                con.execute(
                    f"COPY ({sql('staging/segment_rows')}) TO '{tmp}' "
                    "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (segment_id), WRITE_PARTITION_COLUMNS true)",
                    {"files": [str(p) for p in paths], "partition_hour": hour},
                )
                for part in tmp.iterdir():
                    segment_id = part.name.split("=", 1)[1]
                    (data,) = list(part.iterdir())
                    _fsync_file(data)
                    final = folder / f"{segment_id}.parquet"
                    os.replace(data, final)
                    written.append(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(folder)
    finally:
        if own:
            con.close()
    return written


def twin_writer() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for ``columnar_twins``; close it when done."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # as the warehouse's connections: the same casts
    con.execute("SET threads = 1")  # small files; leave the other cores to the work around it
    return con


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def utc_now_iso() -> str:
    return instant_text(datetime.now(UTC))
