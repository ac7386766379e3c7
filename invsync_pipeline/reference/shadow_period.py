"""A compressed cutover shadow period: weeks of plant activity beside the batch sync, through the real systems.

Every movement is posted to the ERP and published through the ERP outbox and RabbitMQ; the sync
worker applies it to the shadow MES (shadow mode); the old batch sync copies the ERP to the live
MES every N simulated hours. Early on, an interface problem loses some events: packaging scrap
(movement type 551) is posted in the ERP but never published, so the shadow MES drifts and the
daily accuracy stays under the gate. On ``fix_day`` the interface is fixed and the shadow is
seeded from the ERP again; on ``widen_day`` the pilot scope takes in raw materials too, seeded
the same way. Timestamps are the simulated ones; the run takes as long as the systems need.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from invsync_pipeline.contract import InventoryEvent, instant_text, parse_event
from invsync_pipeline.cutover.batch_sync import run_batch_sync
from invsync_pipeline.cutover.scope import scope_on
from invsync_pipeline.cutover.switch import seed_from_erp
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.reference.sim_run import BackgroundWorker, SimulationError
from invsync_pipeline.resources import ErpResource, MesResource
from invsync_pipeline.settings import CutoverSettings, PilotStage, Settings

log = logging.getLogger("invsync.shadow_period")

# Two storage locations per type, so transfers happen; units as the material master has them.
_STORES = {"raw": ("RM01", "RM02"), "packaging": ("PK01", "PK02"), "mro": ("MR01", "MR02"),
           "wip": ("PS01", "PS02"), "finished": ("FG01", "FG02")}  # fmt: skip
_UNIT = {"raw": "KG", "packaging": "EA", "mro": "EA", "wip": "EA", "finished": "EA"}


@dataclass(frozen=True)
class ShadowPeriod:
    # None: the days just before today (UTC). Movements older than the contract's horizon
    # (contract.max_age_days) would be parked as invalid, so a fixed date would stop working.
    start: datetime = None  # type: ignore[assignment]
    days: int = 21
    events_per_hour: int = 6
    materials_per_type: int = 10
    fix_day: int = 7  # the lost-events problem stops and the shadow is seeded again
    widen_day: int | None = 14  # raw materials join the pilot scope
    warehouse: str = "WH01"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.start is None:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            object.__setattr__(self, "start", today - timedelta(days=self.days + 1))

    def pilot(self) -> tuple[PilotStage, ...]:
        stages = [PilotStage(since=self.start.date(), material_types=("mro", "packaging"))]
        if self.widen_day is not None:
            stages.append(PilotStage(since=(self.start + timedelta(days=self.widen_day)).date(),
                                     material_types=("mro", "packaging", "raw")))  # fmt: skip
        return tuple(stages)

    def cutover_settings(self, base: CutoverSettings, **changes: object) -> CutoverSettings:
        """The cutover config this period runs under: shadow mode, its pilot stages."""
        return base.model_copy(update={"initial_mode": "shadow", "pilot": self.pilot(), **changes})


@dataclass
class ShadowResult:
    events: int = 0
    published: int = 0
    lost_to_the_problem: int = 0
    batch_runs: int = 0
    batch_postings: int = 0
    seeds: int = 0


class _Plant:
    """Materials and their stock as the simulation believes it, so issues never go below zero."""

    def __init__(self, period: ShadowPeriod):
        self.rng = random.Random(period.seed)
        self.period = period
        self.materials = [
            (f"{t.upper()[:3]}-{n:04d}", t) for t in _STORES for n in range(1, period.materials_per_type + 1)
        ]
        self.stock: dict[tuple[str, str], int] = {}
        self.count = 0

    def location(self, material_type: str, which: int) -> str:
        return f"{self.period.warehouse}/{_STORES[material_type][which]}"

    def _event(
        self, at: datetime, material: str, material_type: str, kind: str, qty: int, **extra: str
    ) -> InventoryEvent:
        self.count += 1
        reason, movement = {"receipt": ("purchase_receipt", "101"), "issue": ("production_consumption", "261"),
                            "shipment": ("shipment", "601"), "scrap": ("scrap", "551"),
                            "transfer": ("stock_transfer", "311")}[kind]  # fmt: skip
        return parse_event({
            "schema_version": "1", "transaction_id": f"SHADOW-{self.period.seed}-{self.count:07d}",
            "timestamp": instant_text(at), "source_system": "ERP",
            "material_number": material, "material_type": material_type, "quantity": str(qty),
            "unit": _UNIT[material_type], "transaction_type": kind if kind in ("receipt", "transfer") else "issue",
            "reason": reason, "erp_reference": f"49{self.count:08d}", "movement_type": movement, **extra,
        })  # fmt: skip

    def opening(self, at: datetime) -> list[InventoryEvent]:
        events = []
        for material, material_type in self.materials:
            for which in (0, 1):
                qty = self.rng.randint(50, 200)
                self.stock[(material, self.location(material_type, which))] = qty
                events.append(self._event(at, material, material_type, "receipt", qty,
                                          location=self.location(material_type, which)))  # fmt: skip
        return events

    def movement(self, at: datetime) -> InventoryEvent:
        material, material_type = self.rng.choice(self.materials)
        which = self.rng.randint(0, 1)
        here = self.location(material_type, which)
        held = self.stock[(material, here)]
        roll = self.rng.random()
        if held < 10 or roll < 0.35:
            qty = self.rng.randint(10, 60)
            self.stock[(material, here)] = held + qty
            return self._event(at, material, material_type, "receipt", qty, location=here)
        qty = self.rng.randint(1, max(1, held // 4))
        self.stock[(material, here)] = held - qty
        if roll < 0.55:
            there = self.location(material_type, 1 - which)
            self.stock[(material, there)] += qty
            return self._event(at, material, material_type, "transfer", qty, location=here, to_location=there)
        if material_type == "packaging" and roll < 0.7:
            return self._event(at, material, material_type, "scrap", qty, location=here)
        kind = "shipment" if material_type == "finished" else "issue"
        return self._event(at, material, material_type, kind, qty, location=here)


def run_shadow_period(
    period: ShadowPeriod,
    settings: Settings,
    worker: BackgroundWorker,
    *,
    drain_timeout: float = 300.0,
    erp: ErpResource | None = None,
    mes: MesResource | None = None,
) -> ShadowResult:
    """Carry out the period against the ERP, the broker, ``worker`` (shadow mode) and the MES.

    ``settings.cutover`` must be ``period.cutover_settings(...)`` so the worker, the batch sync
    and the comparison agree on the mode and the pilot scope."""
    if settings.cutover.initial_mode != "shadow" or settings.cutover.pilot != period.pilot():
        raise SimulationError("settings.cutover must be period.cutover_settings(settings.cutover)")
    plant = _Plant(period)
    result = ShadowResult()
    erp_resource, mes_resource = erp or ErpResource(), mes or MesResource()
    erp = erp_resource.open()
    outbox = Outbox(settings)
    live = mes_resource.open("live")
    baseline = worker.handled
    every = timedelta(hours=settings.cutover.batch_sync_every_hours)
    try:
        erp.create_schema()
        for material, material_type in plant.materials:
            erp.upsert_material(material, material_type, _UNIT[material_type], unit_cost=Decimal("2.50"),
                                currency="EUR", abc_class="B")  # fmt: skip

        def send(events: list[InventoryEvent], *, fixed: bool) -> None:
            published = []
            for event in events:
                erp.post(event)
                if not fixed and event.movement_type == "551":
                    result.lost_to_the_problem += 1  # the broken interface never publishes scrap
                else:
                    published.append(event)
            result.events += len(events)
            result.published += len(published)
            if published:
                outbox.enqueue(published)
                flushed = outbox.flush_until_empty(120)
                if flushed.pending:
                    raise SimulationError(f"the ERP outbox did not empty: {flushed.summary()}")

        def caught_up() -> None:
            worker.wait_for(baseline + result.published, drain_timeout)

        send(plant.opening(period.start), fixed=True)
        end = period.start + timedelta(days=period.days)
        at, next_batch = period.start, period.start
        seeded_days = {period.fix_day, period.widen_day} - {None}
        while at < end:
            day = (at - period.start).days
            if at == period.start + timedelta(days=day) and day in seeded_days and day > 0:
                caught_up()  # every earlier event is in the shadow before the seed sets it
                seed_from_erp(settings, "shadow", scope_on(settings, at.date()), at, erp=erp_resource, mes=mes_resource)
                result.seeds += 1
            if at >= next_batch:
                summary = run_batch_sync(settings, live, erp, at)
                result.batch_runs += 1
                result.batch_postings += int(summary.get("posted", 0))
                next_batch = at + every
            hour = [plant.movement(at + timedelta(seconds=(i + 1) * 3600 // (period.events_per_hour + 1)))
                    for i in range(period.events_per_hour)]  # fmt: skip
            send(hour, fixed=day >= period.fix_day)
            at += timedelta(hours=1)
        caught_up()
    finally:
        live.close()
        outbox.close()
        erp.dispose()
    log.info("shadow period: %s", result)
    return result
