"""The shape of a simulation plan: planned events, the ordered actions of a run, and the ground truth of each fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.reference.faults import FAULT_TYPES, FaultProfile
from invsync_pipeline.reference.plant import Plant

ActionKind = Literal["erp_post", "mes_backflush", "publish", "publish_to_tap", "publish_malformed", "checkpoint"]
Key = tuple[str, str]  # (material number, location)


@dataclass(frozen=True)
class PlannedEvent:
    """One movement: as the originating system books it, and how it travels (``delivery``)."""

    event: InventoryEvent
    delivery: str  # outbox | mes_publisher | or the delivery of a fault type (faults.FAULT_KINDS)
    in_erp: bool  # the ERP books it (posted by the simulator)
    sent: InventoryEvent | None = None  # the valid message the simulator publishes, if any
    sent_body: bytes | None = None  # the invalid body it publishes instead (malformed)
    fault_id: str | None = None

    @property
    def in_mes(self) -> str:
        """How the MES gets it: backflush (it originates there), sync (the worker), or none."""
        if self.event.source_system == "MES":
            return "backflush"
        return "sync" if self.delivery in ("outbox", "outbox_twice", "outbox_late", "outbox_reordered",
                                           "outbox_other_unit") else "none"  # fmt: skip


@dataclass(frozen=True)
class Action:
    """One step of the run. ``event`` indexes ``Simulation.events``; a checkpoint has none."""

    kind: ActionKind
    event: int | None = None
    note: str = ""


@dataclass(frozen=True)
class FaultEffect:
    """Ground truth of one injected fault at one (material, location, unit)."""

    fault_id: str
    fault_type: str
    transaction_ids: tuple[str, ...]
    material_number: str
    material_type: str
    location: str
    unit: str
    erp_effect: Decimal  # signed change of ERP stock the fault's movements made, in ``unit``
    mes_effect: Decimal  # signed change of MES stock once everything was delivered, in ``unit``
    partition_key: str  # the UTC hour the movement belongs to, "YYYY-MM-DD-HH:00"
    expected_cause: str
    acceptable_causes: tuple[str, ...]
    lacking_system: str | None
    detail: str

    @property
    def persistent(self) -> bool:
        """Whether ERP and MES still differ here after the run (mes_effect != erp_effect)."""
        return self.mes_effect != self.erp_effect


@dataclass(frozen=True)
class Simulation:
    seed: int
    start: datetime
    hours: int
    plant: Plant
    profile: FaultProfile
    events: tuple[PlannedEvent, ...]
    actions: tuple[Action, ...]
    faults: tuple[FaultEffect, ...] = field(default=())

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)

    @property
    def run_id(self) -> str:
        counts = ",".join(f"{n}" for n in self.profile.counts.values())
        return f"{self.seed}-{self.start:%Y%m%dT%H}Z-{self.hours}h-{self.plant.size}-{self.profile.name}-{counts}"

    def faults_by_type(self) -> dict[str, int]:
        found = {(f.fault_type, f.fault_id) for f in self.faults}
        return {t: n for t in FAULT_TYPES if (n := sum(1 for ft, _ in found if ft == t))}
