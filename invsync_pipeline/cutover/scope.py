"""Pilot scope: which material types the event-driven path carries on a given day.

The stages in ``cutover.pilot`` widen the scope step by step (MRO and packaging first). Each
stage holds from its date on, by the movement's own timestamp, so a backfill of an old day
sees the scope that held that day.
"""

from __future__ import annotations

from datetime import date, datetime

from invsync_pipeline.settings import MATERIAL_TYPES, Settings


def scope_on(settings: Settings, day: date) -> tuple[str, ...]:
    """The material types in scope on ``day``; every type when no pilot is configured."""
    stages = settings.cutover.pilot
    if not stages:
        return MATERIAL_TYPES
    current: tuple[str, ...] = ()
    for stage in stages:
        if stage.since <= day:
            current = stage.material_types
    return current


def in_scope(settings: Settings, material_type: str, at: datetime) -> bool:
    return material_type in scope_on(settings, at.date())


def scope_label(types: tuple[str, ...]) -> str:
    """A stable name for a scope, e.g. "mro+packaging"; "all" for every type."""
    return "all" if set(types) == set(MATERIAL_TYPES) else "+".join(t for t in MATERIAL_TYPES if t in types) or "none"
