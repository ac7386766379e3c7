"""The old batch sync (the one invsync replaces), and the stock copy that seeds a namespace at a switch.

The batch sync copies ERP stock to the live MES every N hours: each material-location whose MES
balance differs from the ERP's gets a cycle count setting it to the ERP's balance. Its
transaction ids are derived from the run's instant and the key, so a run repeated after a crash
changes nothing twice. In shadow mode it carries every material type; once live, only those
outside the pilot scope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.cutover.scope import scope_on
from invsync_pipeline.cutover.state import CutoverState
from invsync_pipeline.settings import MATERIAL_TYPES, Settings
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.sources.mes import MesClient, MesError

Key = tuple[str, str, str]  # (material_number, location, unit)


@dataclass
class AlignResult:
    compared: int = 0
    posted: int = 0
    unchanged: int = 0
    skipped_unknown_material: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"compared": self.compared, "posted": self.posted, "unchanged": self.unchanged,
                "skipped_unknown_material": self.skipped_unknown_material, "failed": len(self.failed)}  # fmt: skip


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def key_hash(key: tuple[str, ...]) -> str:
    """A short stable hash of a key, for deterministic transaction ids."""
    return hashlib.sha1("|".join(key).encode()).hexdigest()[:16]


def copy_id(id_prefix: str, at: datetime, key: Key) -> str:
    """The transaction_id of the cycle count ``align`` posts for ``key`` at ``at``."""
    return f"{id_prefix}-{_stamp(at)}-{key_hash(key)}"


def instant_text(moment: datetime) -> str:
    """``moment`` as the contract writes a timestamp (UTC, microseconds, Z)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def align(
    dest: MesClient,
    wanted: dict[Key, Decimal],
    material_types: dict[str, str],
    types: Iterable[str],
    at: datetime,
    id_prefix: str,
    reference: str,
    *,
    current: dict[Key, Decimal] | None = None,
    concurrency: int = 8,
) -> AlignResult:
    """Post cycle counts to ``dest`` so its stock of ``types`` equals ``wanted`` at ``at``.

    ``current`` is dest's stock as of ``at`` (read here when not given); keys dest holds that
    ``wanted`` lacks are counted to zero. ``material_types`` maps material number to type (the
    MES does not know types; the ERP's material master does)."""
    types = set(types)
    if current is None:
        # Including what is stamped exactly ``at``: an earlier copy at the same instant counts.
        just_after = at + timedelta(microseconds=1)
        current = {(r.material_number, r.location, r.unit): r.quantity for r in dest.stock(as_of=just_after)}
    result = AlignResult()
    events: list[InventoryEvent] = []
    for key in sorted(set(wanted) | set(current)):
        material, location, unit = key
        material_type = material_types.get(material)
        if material_type is None:
            result.skipped_unknown_material += 1
            continue
        if material_type not in types:
            continue
        result.compared += 1
        target, held = wanted.get(key, Decimal(0)), current.get(key, Decimal(0))
        if target == held:
            result.unchanged += 1
            continue
        message = {
            "schema_version": "1",
            "transaction_id": copy_id(id_prefix, at, key),
            "timestamp": instant_text(at),
            "source_system": "ERP",
            "material_number": material,
            "material_type": material_type,
            "unit": unit,
            "location": location,
            "erp_reference": reference,
            "reason": "physical_inventory" if target >= 0 else "correction",
        }
        if target >= 0:
            message |= {"transaction_type": "cycle_count", "quantity": format(target, "f")}
        else:  # a count cannot be negative; move the difference instead
            message |= {"transaction_type": "adjustment", "quantity": format(target - held, "f")}
        events.append(parse_event(message))

    def post(event: InventoryEvent) -> str:
        try:
            return dest.post_transaction(event).status
        except MesError as exc:
            return f"failed: {event.transaction_id}: {exc}"

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="align") as pool:
        for outcome in pool.map(post, events):
            if outcome.startswith("failed: "):
                result.failed.append(outcome.removeprefix("failed: "))
            elif outcome == "duplicate":
                result.unchanged += 1  # written by an earlier run of the same copy
            else:
                result.posted += 1
    return result


def erp_stock(erp: ErpDatabase, at: datetime) -> tuple[dict[Key, Decimal], dict[str, str]]:
    """(stock per key as of ``at``, material type per material) from the ERP."""
    frame = erp.stock_as_of(at, include_zero=True)
    stock = {
        (str(m), str(loc), str(unit)): Decimal(q)
        for m, loc, unit, q in zip(frame["material"], frame["location"], frame["unit"], frame["quantity"], strict=True)
    }
    master = erp.materials()
    return stock, dict(zip(master["material"].astype(str), master["material_type"], strict=True))


def batch_types(settings: Settings, mode: str, at: datetime) -> tuple[str, ...]:
    """What the batch sync carries: everything in shadow mode; outside the pilot scope once live."""
    if mode == "shadow":
        return MATERIAL_TYPES
    scope = set(scope_on(settings, at.date()))
    return tuple(t for t in MATERIAL_TYPES if t not in scope)


def run_batch_sync(
    settings: Settings, at: datetime | None = None, *, live: MesClient | None = None, erp: ErpDatabase | None = None
) -> dict[str, object]:
    """One batch sync run as of ``at`` (default now): ERP stock -> the live MES."""
    at = at or datetime.now(UTC)
    with CutoverState(settings) as state:
        mode = state.current().mode
    types = batch_types(settings, mode, at)
    summary: dict[str, object] = {"at": instant_text(at), "mode": mode, "material_types": list(types)}
    if not types:
        return summary | {"skipped": "the event-driven path is live for every material type"}
    own_erp, own_live = erp is None, live is None
    erp = erp or ErpDatabase.from_settings(settings)
    live = live or MesClient.from_settings(settings)
    try:
        wanted, material_types = erp_stock(erp, at)
        result = align(live, wanted, material_types, types, at, "BATCH", f"BATCHSYNC-{_stamp(at)}")
    finally:
        if own_erp:
            erp.dispose()
        if own_live:
            live.close()
    return summary | result.as_dict() | ({"first_failure": result.failed[0]} if result.failed else {})
