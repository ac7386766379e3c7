"""Which plant queues the sync worker consumes, and when the non-critical ones are open."""

from __future__ import annotations

from datetime import datetime

from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings, clock_window


def plant_queues(settings: Settings) -> tuple[list[str], list[str]]:
    """(critical queues, non-critical queues) of every configured plant, with namespace."""
    topo = build_topology(settings)
    return list(topo.critical_queues), list(topo.noncritical_queues)


def in_window(windows: tuple[str, ...], now: datetime) -> bool:
    """True when no windows are configured or ``now`` (UTC) falls in one ("HH:MM-HH:MM")."""
    minute = now.hour * 60 + now.minute
    for start, end in (clock_window(window) for window in windows):
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return not windows
