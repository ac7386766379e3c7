"""Which plant queues the sync worker consumes, and when the non-critical ones are open."""

from __future__ import annotations

from datetime import datetime

from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.settings import Settings, clock_window


def plant_queues(settings: Settings) -> tuple[list[str], list[str]]:
    """(critical queues, non-critical queues) of every configured plant, with namespace; only the
    plant's own with ``plant`` set (INVSYNC_PLANT: a worker beside that plant's MES)."""
    topo = build_topology(settings)
    own = {q for q, wh, _, _ in topo.routes if settings.plant is None or wh == settings.plant.lower()}
    return [q for q in topo.critical_queues if q in own], [q for q in topo.noncritical_queues if q in own]


def in_window(windows: tuple[str, ...], now: datetime) -> bool:
    """True when no windows are configured or ``now`` (UTC) falls in one ("HH:MM-HH:MM")."""
    minute = now.hour * 60 + now.minute
    for start, end in (clock_window(window) for window in windows):
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return not windows
