"""Setting an MES's stock to given balances at an instant: the bulk load behind onboarding a plant,
the old batch sync and a cutover's copy.

Each material-location whose balance differs gets a cycle count (an adjustment where the
balance is negative, since a count cannot be), posted in batches. Transaction ids derive from
the instant and the key, so a load repeated after a crash writes nothing twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from invsync_pipeline.contract import InventoryEvent, instant_text, parse_event
from invsync_pipeline.sources.erp import ErpApi
from invsync_pipeline.sources.mes import MesApi, MesError, PostResult

Key = tuple[str, str, str]  # (material_number, location, unit)
_BATCH = 500


@dataclass
class BalanceLoad:
    compared: int = 0
    posted: int = 0
    unchanged: int = 0
    skipped_unknown_material: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"compared": self.compared, "posted": self.posted, "unchanged": self.unchanged,
                "skipped_unknown_material": self.skipped_unknown_material, "failed": len(self.failed)}  # fmt: skip


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def key_hash(key: tuple[str, ...]) -> str:
    """A short stable hash of a key, for deterministic transaction ids."""
    return hashlib.sha1("|".join(key).encode()).hexdigest()[:16]


def balance_id(id_prefix: str, at: datetime, key: Key) -> str:
    """The transaction_id of the count ``set_balances`` posts for ``key`` at ``at``."""
    return f"{id_prefix}-{stamp(at)}-{key_hash(key)}"


def balance_events(
    wanted: dict[Key, Decimal],
    current: dict[Key, Decimal],
    material_types: dict[str, str],
    types: Iterable[str],
    at: datetime,
    id_prefix: str,
    reference: str,
    result: BalanceLoad,
) -> list[InventoryEvent]:
    """The counts that take ``current`` to ``wanted`` for the material types ``types``."""
    types = set(types)
    events = []
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
            "transaction_id": balance_id(id_prefix, at, key),
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
    return events


def set_balances(
    dest: MesApi,
    wanted: dict[Key, Decimal],
    material_types: dict[str, str],
    types: Iterable[str],
    at: datetime,
    id_prefix: str,
    reference: str,
    *,
    current: dict[Key, Decimal] | None = None,
) -> BalanceLoad:
    """Post counts to ``dest`` so its stock of ``types`` equals ``wanted`` at ``at``.

    ``current`` is dest's stock as of ``at`` (read here when not given); keys dest holds that
    ``wanted`` lacks are counted to zero. ``material_types`` maps material number to type (the
    MES does not know types; the ERP's material master does)."""
    if current is None:
        current = mes_balances(dest, at + timedelta(microseconds=1))  # an earlier load at the same instant counts
    result = BalanceLoad()
    events = balance_events(wanted, current, material_types, types, at, id_prefix, reference, result)
    for start in range(0, len(events), _BATCH):
        batch = events[start : start + _BATCH]
        try:
            outcomes: list[PostResult | MesError] = list(dest.post_transactions(batch))
        except MesError as exc:
            outcomes = [exc] * len(batch)
        for event, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, MesError):
                result.failed.append(f"{event.transaction_id}: {outcome}")
            elif outcome.status == "duplicate":
                result.unchanged += 1  # written by an earlier run of the same load
            else:
                result.posted += 1
    return result


def mes_balances(mes: MesApi, as_of: datetime | None = None) -> dict[Key, Decimal]:
    """The MES's stock per key (now, or strictly before ``as_of``)."""
    return {(r.material_number, r.location, r.unit): r.quantity for r in mes.stock(as_of=as_of)}


def erp_stock(erp: ErpApi, at: datetime) -> tuple[dict[Key, Decimal], dict[str, str]]:
    """(stock per key as of ``at``, material type per material) from the ERP."""
    frame = erp.stock_as_of(at, include_zero=True)
    stock = {
        (str(m), str(loc), str(unit)): Decimal(q)
        for m, loc, unit, q in zip(frame["material"], frame["location"], frame["unit"], frame["quantity"], strict=True)
    }
    master = erp.materials()
    return stock, dict(zip(master["material"].astype(str), master["material_type"], strict=True))
