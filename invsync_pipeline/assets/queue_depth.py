"""Queue depth in an hour, from the samples queue_health_sensor keeps in ops.sqlite (read-only)."""

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

# Roles of the topology's queues (messaging/topology.py), in the order an operator reads them.
ROLES = ("work", "tap", "retry", "parking")
# sampled_at is ISO 8601 text; rows are prefiltered as text this far around the hour, so a sample
# written with another UTC offset is still found, then compared as a datetime.
_TEXT_MARGIN = timedelta(hours=15)


@dataclass
class HourDepth:
    """Messages in the queues (ready + unacked) during one hour, summed per role at each sampling pass."""

    passes: int = 0
    max_by_role: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    last_by_role: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    by_queue: pd.DataFrame = field(default_factory=pd.DataFrame)


def hour_depth(path: Path, start: datetime, end: datetime) -> HourDepth:
    """The samples taken in [start, end). Read-only, so an asset run never creates or changes the
    sensor's file; an hour without samples (or no file) gives zeros and passes == 0."""
    depth = HourDepth()
    if not path.exists():
        return depth
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            """SELECT sampled_at, queue, role, ready, unacked, consumers FROM queue_samples
               WHERE sampled_at >= ? AND sampled_at < ?""",
            ((start - _TEXT_MARGIN).isoformat(), (end + _TEXT_MARGIN).isoformat()),
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return depth  # ops.sqlite exists, but nothing has sampled a queue yet
        raise
    finally:
        conn.close()
    frame = pd.DataFrame(rows, columns=["sampled_at", "queue", "role", "ready", "unacked", "consumers"])
    frame["at"] = pd.to_datetime(frame["sampled_at"], utc=True, format="ISO8601")
    frame = frame[(frame["at"] >= start) & (frame["at"] < end)]
    if frame.empty:
        return depth
    # Passive declares cannot see unacked messages: they count as 0 in the depth, "-" in the table.
    frame["unacked_seen"] = frame["unacked"]
    frame["unacked"] = frame["unacked"].fillna(0).astype(int)
    frame["depth"] = frame["ready"] + frame["unacked"]

    per_pass = frame.pivot_table(index="at", columns="role", values="depth", aggfunc="sum", fill_value=0)
    per_pass = per_pass.reindex(columns=list(ROLES), fill_value=0).sort_index()
    depth.passes = len(per_pass)
    depth.max_by_role = {role: int(per_pass[role].max()) for role in ROLES}
    depth.last_by_role = {role: int(per_pass[role].iloc[-1]) for role in ROLES}

    frame = frame.sort_values("at")
    by_queue = frame.groupby(["queue", "role"], sort=False).agg(
        max_ready=("ready", "max"),
        max_unacked=("unacked_seen", "max"),
        max_depth=("depth", "max"),
        last_depth=("depth", "last"),
        min_consumers=("consumers", "min"),
    )
    by_queue = by_queue.reset_index()
    by_queue["max_unacked"] = by_queue["max_unacked"].map(lambda v: "-" if pd.isna(v) else int(v))
    role_order = by_queue["role"].map({role: i for i, role in enumerate(ROLES)}).fillna(len(ROLES))
    by_queue = by_queue.assign(_order=role_order).sort_values(["_order", "max_depth", "queue"],
                                                               ascending=[True, False, True])  # fmt: skip
    depth.by_queue = by_queue.drop(columns="_order").reset_index(drop=True)
    return depth
