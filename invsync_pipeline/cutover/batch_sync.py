"""The old batch sync (the one invsync replaces): ERP stock copied to the live MES every N hours.

Each material-location whose MES balance differs from the ERP's gets a cycle count setting it to
the ERP's balance (sources/balances.py); ids derive from the run's instant and the key, so a run
repeated after a crash changes nothing twice. In shadow mode it carries every material type;
once live, only those outside the pilot scope.
"""

from __future__ import annotations

from datetime import UTC, datetime

from invsync_pipeline.contract import instant_text
from invsync_pipeline.cutover.scope import scope_on
from invsync_pipeline.cutover.state import CutoverState
from invsync_pipeline.settings import MATERIAL_TYPES, Settings
from invsync_pipeline.sources.balances import erp_stock, set_balances, stamp
from invsync_pipeline.sources.erp import ErpApi
from invsync_pipeline.sources.mes import MesApi


def batch_types(settings: Settings, mode: str, at: datetime) -> tuple[str, ...]:
    """What the batch sync carries: everything in shadow mode; outside the pilot scope once live."""
    if mode == "shadow":
        return MATERIAL_TYPES
    scope = set(scope_on(settings, at.date()))
    return tuple(t for t in MATERIAL_TYPES if t not in scope)


def run_batch_sync(settings: Settings, live: MesApi, erp: ErpApi, at: datetime | None = None) -> dict[str, object]:
    """One batch sync run as of ``at`` (default now): ERP stock -> the live MES."""
    at = at or datetime.now(UTC)
    with CutoverState(settings) as state:
        mode = state.current().mode
    types = batch_types(settings, mode, at)
    summary: dict[str, object] = {"at": instant_text(at), "mode": mode, "material_types": list(types)}
    if not types:
        return summary | {"skipped": "the event-driven path is live for every material type"}
    wanted, material_types = erp_stock(erp, at)
    result = set_balances(live, wanted, material_types, types, at, "BATCH", f"BATCHSYNC-{stamp(at)}")
    return summary | result.as_dict() | ({"first_failure": result.failed[0]} if result.failed else {})
