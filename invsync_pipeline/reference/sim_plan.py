"""Planning a plant simulation: a pure, seeded function from (seed, start, hours, size, faults) to a run's actions.

Nothing here touches a database, the broker or the clock, so the same arguments always give
the same ``Simulation``, transaction ids included (they come from the seed, the start hour and
a counter). ``sim_run.run`` carries the actions out.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.partitions import partition_key_of
from invsync_pipeline.reference.faults import FAULT_KINDS, FAULT_TYPES, FaultProfile, resolve_profile
from invsync_pipeline.reference.plant import ACTIVITY, SMALLER_UNIT, WAREHOUSES, Material, Plant, build_plant
from invsync_pipeline.reference.sim_model import (
    Action,
    ActionKind,
    FaultEffect,
    Key,
    PlannedEvent,
    Simulation,
)


@dataclass(frozen=True)
class _FaultSlot:
    fault_id: str
    fault_type: str
    hour: int
    material: Material
    location: str


class _Planner:
    """Builds the plan hour by hour, keeping the books of both systems so every quantity is feasible."""

    def __init__(self, seed: int, start: datetime, plant: Plant, rng: random.Random):
        self.rng, self.plant, self.seed = rng, plant, seed
        self.id_prefix = f"SIM{seed}-{start:%y%m%d%H}"
        self.events: list[PlannedEvent] = []
        self.actions: list[Action] = []
        self.faults: list[FaultEffect] = []
        # The books the plan keeps both systems at, so no plan drives a stock negative.
        self.erp: dict[Key, Decimal] = defaultdict(Decimal)
        self.mes: dict[Key, Decimal] = defaultdict(Decimal)
        self._ids, self._refs = count(1), count(1)
        self.late: list[int] = []
        self.duplicates: list[int] = []
        self.fault_keys: set[Key] = set()

    # --- building blocks ----------------------------------------------------------------------
    def ref(self, prefix: str, width: int = 8) -> str:
        """A document reference in an SAP-like number range: 45... purchase orders, 80... deliveries."""
        return f"{prefix}{next(self._refs):0{width}d}"

    def order(self) -> str:
        """A production or maintenance order number (SAP's internal range starts at 1000000)."""
        return self.ref("10", 5)

    def event(self, ts: datetime, m: Material, location: str, kind: str, reason: str, quantity: Decimal,
              movement_type: str | None, reference: str, *, to_location: str | None = None,
              source: str = "ERP") -> InventoryEvent:  # fmt: skip
        message = {"schema_version": "1", "transaction_id": f"{self.id_prefix}-{next(self._ids):06d}",
                   "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "source_system": source,
                   "material_number": m.number, "material_type": m.material_type, "quantity": format(quantity, "f"),
                   "unit": m.unit, "location": location, "to_location": to_location, "transaction_type": kind,
                   "reason": reason, "erp_reference": reference, "movement_type": movement_type}  # fmt: skip
        # Through the contract's own parser, so a plan can only hold events every consumer accepts.
        return parse_event({k: v for k, v in message.items() if v is not None})

    def add(self, planned: PlannedEvent, *kinds: ActionKind, erp: bool = True, mes: bool = True) -> int:
        index = len(self.events)
        self.events.append(planned)
        self.actions.extend(Action(kind, index) for kind in kinds)
        for location, delta in planned.event.stock_effects():
            key = (planned.event.material_number, location)
            if erp:
                self.erp[key] += delta
            if mes:
                self.mes[key] += delta
        return index

    def erp_movement(self, event: InventoryEvent) -> int:
        return self.add(PlannedEvent(event, "outbox", True, sent=event), "erp_post", "publish")

    def backflush(self, event: InventoryEvent) -> int:
        # The MES books and publishes it; SAP's backflush interface then posts the same movement.
        return self.add(PlannedEvent(event, "mes_publisher", True), "mes_backflush", "erp_post")

    def available(self, m: Material, location: str) -> Decimal:
        return min(self.erp[(m.number, location)], self.mes[(m.number, location)])

    def take(self, m: Material, location: str, low: float, high: float) -> Decimal | None:
        """An issue quantity that leaves at least half the stock both systems hold, or None."""
        q = min(m.lots(low, high, self.rng.random()), m.quantity(self.available(m, location) / 2))
        return q if q > 0 else None

    def lowest(self, candidates: tuple[Material, ...], location_of: Callable[[Material], str]) -> Material:
        sample = self.rng.sample(candidates, min(3, len(candidates)))
        return min(sample, key=lambda m: self.erp[(m.number, location_of(m))] / m.lot)

    # --- normal plant activity ----------------------------------------------------------------
    def opening_stock(self, start: datetime) -> None:
        for i, (m, location, quantity) in enumerate(self.plant.opening_stock()):
            # 561: initial entry of stock balances, as a plant going live books its opening stock.
            wh = location.split("/")[0]
            self.erp_movement(self.event(start + timedelta(seconds=i), m, location, "receipt", "correction",
                                         quantity, "561", f"INIT-{wh}"))  # fmt: skip

    def purchase_receipt(self, wh: str, ts: datetime) -> None:
        m = self.lowest(self.plant.of_type("raw", "packaging", "mro"), lambda m: self.plant.home(m, wh))
        if self.erp[(m.number, self.plant.home(m, wh))] >= m.lot * 40:
            return  # nobody orders what fills the store for days
        q = m.lots(2, 5, self.rng.random())
        self.erp_movement(self.event(ts, m, self.plant.home(m, wh), "receipt", "purchase_receipt", q, "101",
                                     self.ref("45")))  # fmt: skip

    def transfer(self, wh: str, ts: datetime) -> None:
        supply = self.plant.supply(wh)
        m = self.lowest(self.plant.of_type("raw", "packaging"), lambda _m: supply)
        if self.erp[(m.number, supply)] >= m.lot * 8:
            return  # production supply is full; nobody moves stock for nothing
        if q := self.take(m, self.plant.home(m, wh), 1, 2.5):
            self.erp_movement(self.event(ts, m, self.plant.home(m, wh), "transfer", "stock_transfer", q, "311",
                                         self.ref("TO", 7), to_location=supply))  # fmt: skip

    def production_order(self, wh: str, ts: datetime) -> None:
        supply, wips = self.plant.supply(wh), self.plant.of_type("wip")
        low_wip = wips and min(self.erp[(w.number, supply)] / w.lot for w in wips) < 4
        output = self.rng.choice(wips) if low_wip and self.rng.random() < 0.5 else None
        output = output or self.rng.choice(self.plant.of_type("finished"))
        components = self.plant.of_type("raw", "packaging") + (wips if output.material_type == "finished" else ())
        order = self.order()
        for i, m in enumerate(self.rng.sample(components, min(self.rng.randint(1, 3), len(components)))):
            q = self.take(m, supply, 0.1, 0.4)
            if q is None:
                continue
            at = ts + timedelta(seconds=i)
            # Part of the plant backflushes in the MES, part confirms consumption in SAP directly.
            if self.rng.random() < 0.5:
                self.backflush(self.event(at, m, supply, "issue", "production_consumption", q, "261", order,
                                          source="MES"))  # fmt: skip
            else:
                self.erp_movement(self.event(at, m, supply, "issue", "production_consumption", q, "261", order))
        q_out = output.lots(0.2, 0.6, self.rng.random())
        self.erp_movement(self.event(ts + timedelta(seconds=30), output, self.plant.home(output, wh), "receipt",
                                     "production_receipt", q_out, "101", order))  # fmt: skip

    def shipment(self, wh: str, ts: datetime) -> None:
        m = self.rng.choice(self.plant.of_type("finished"))
        if q := self.take(m, self.plant.home(m, wh), 0.3, 1.0):
            self.erp_movement(self.event(ts, m, self.plant.home(m, wh), "issue", "shipment", q, "601",
                                         self.ref("80", 6)))  # fmt: skip

    def mro_issue(self, wh: str, ts: datetime) -> None:
        m = self.rng.choice(self.plant.of_type("mro"))
        if q := self.take(m, self.plant.home(m, wh), 0.2, 0.6):
            self.erp_movement(self.event(ts, m, self.plant.home(m, wh), "issue", "production_consumption", q,
                                         "261", self.order()))  # fmt: skip

    def scrap(self, wh: str, ts: datetime) -> None:
        m = self.rng.choice(self.plant.of_type("raw", "finished"))
        location = self.plant.supply(wh) if m.material_type == "raw" else self.plant.home(m, wh)
        if q := self.take(m, location, 0.02, 0.1):
            self.erp_movement(self.event(ts, m, location, "issue", "scrap", q, "551", self.ref("49")))

    def adjustment(self, wh: str, ts: datetime) -> None:
        m, location = self.rng.choice([k for k in self.plant.stock_keys() if k[1].startswith(wh + "/")])
        q = self.take(m, location, 0.01, 0.05) if self.rng.random() < 0.5 else None
        signed = -q if q else m.lots(0.01, 0.05, self.rng.random())
        self.erp_movement(self.event(ts, m, location, "adjustment", "correction", signed,
                                     "702" if signed < 0 else "701", self.ref("49")))  # fmt: skip

    def cycle_count(self, ts: datetime, m: Material, location: str) -> None:
        book = self.erp[(m.number, location)]
        counted = book
        if self.rng.random() < 0.4:  # the counter finds a little less than the book says
            counted = max(Decimal(0), book - m.lots(0.01, 0.05, self.rng.random()))
        event = self.event(ts, m, location, "cycle_count", "physical_inventory", counted, None, self.ref("1", 9))
        self.add(PlannedEvent(event, "outbox", True, sent=event), "erp_post", "publish")
        self.erp[(m.number, location)] = self.mes[(m.number, location)] = counted

    # --- faults -------------------------------------------------------------------------------
    def fault_slots(self, profile: FaultProfile, hours: int) -> list[_FaultSlot]:
        homes = [(m, self.plant.home(m, wh)) for wh in self.plant.warehouses for m in self.plant.materials]
        pools = {
            "mes_consumption_not_in_erp": [(m, self.plant.supply(wh)) for wh in self.plant.warehouses
                                           for m in self.plant.of_type("raw", "packaging")],
            "uom_mismatch": [(m, loc) for m, loc in homes if m.unit in SMALLER_UNIT],
        }  # fmt: skip
        slots: list[_FaultSlot] = []
        for fault_type in FAULT_TYPES:
            for _ in range(profile.counts[fault_type]):
                pool = pools.get(fault_type, homes)
                # Each fault on a material-location of its own while there are enough, so the ground
                # truth of one key is one fault.
                fresh = [(m, loc) for m, loc in pool if (m.number, loc) not in self.fault_keys] or pool
                m, location = self.rng.choice(fresh)
                self.fault_keys.add((m.number, location))
                fault_id = f"F{len(slots) + 1:03d}"
                slots.append(_FaultSlot(fault_id, fault_type, self.rng.randrange(hours), m, location))
        return slots

    def movement(self, ts: datetime, m: Material, location: str, direction: str) -> InventoryEvent:
        q = self.take(m, location, 0.2, 0.5) if direction == "issue" else None
        if q is None:
            reason = "production_receipt" if m.material_type in ("wip", "finished") else "purchase_receipt"
            ref = self.order() if reason == "production_receipt" else self.ref("45")
            return self.event(ts, m, location, "receipt", reason, m.lots(0.2, 0.6, self.rng.random()), "101", ref)
        if m.material_type == "finished":
            return self.event(ts, m, location, "issue", "shipment", q, "601", self.ref("80", 6))
        if m.material_type in ("wip", "mro"):
            return self.event(ts, m, location, "issue", "production_consumption", q, "261", self.order())
        return self.event(ts, m, location, "issue", "scrap", q, "551", self.ref("49"))

    def inject(self, slot: _FaultSlot, ts: datetime) -> None:
        kind, m, loc, fid = slot.fault_type, slot.material, slot.location, slot.fault_id
        direction = self.rng.choice(("receipt", "issue"))
        if kind == "mes_consumption_not_in_erp":
            q = self.take(m, loc, 0.1, 0.3) or m.lots(0.01, 0.02, 0)
            event = self.event(ts, m, loc, "issue", "production_consumption", q, "261", self.order(), source="MES")
            self.add(PlannedEvent(event, "mes_publisher", False, fault_id=fid), "mes_backflush", erp=False)
            self.record(slot, [event], erp=False, mes=True)
        elif kind == "out_of_order":
            first = self.movement(ts, m, loc, "receipt")
            later = ts + timedelta(minutes=self.rng.randint(1, 3))
            # The issue takes no more than the stock before the receipt: either order stays >= 0.
            second = self.movement(later, m, loc, "issue")
            a = self.add(PlannedEvent(first, "outbox_reordered", True, sent=first, fault_id=fid), "erp_post")
            b = self.add(PlannedEvent(second, "outbox_reordered", True, sent=second, fault_id=fid), "erp_post")
            self.actions += [Action("publish", b, "out of order"), Action("publish", a, "out of order")]
            self.record(slot, [first, second], erp=True, mes=True)
        elif kind == "uom_mismatch":
            event = self.movement(ts, m, loc, "receipt")
            unit, factor = SMALLER_UNIT[m.unit]
            sent = parse_event({**event.to_message(), "unit": unit, "quantity": format(event.quantity * factor, "f")})
            self.add(PlannedEvent(event, "outbox_other_unit", True, sent=sent, fault_id=fid), "erp_post", "publish",
                     mes=False)  # fmt: skip
            # The MES lacks the movement in the base unit, the ERP has nothing in the message's unit.
            self.record(slot, [event], erp=True, mes=False, lacking="MES")
            self.record(slot, [sent], erp=False, mes=True, lacking="ERP")
        else:
            event = self.movement(ts, m, loc, direction)
            reaches_mes = kind in ("duplicate", "late_delivery")
            delivery = FAULT_KINDS[kind].delivery
            sent = None if kind == "erp_posting_never_sent" else event
            planned = PlannedEvent(event, delivery, True, sent=sent, fault_id=fid)
            if kind == "malformed":
                body = event.to_message()
                # A German-locale interface writes "12,5 KG": a string, and not a number.
                body["quantity"] = f"{format(event.quantity, 'f').replace('.', ',')} {event.unit}"
                planned = PlannedEvent(event, delivery, True, sent_body=json.dumps(body).encode(), fault_id=fid)
            steps: dict[str, tuple[ActionKind, ...]] = {
                "lost_message": ("erp_post", "publish_to_tap"), "erp_posting_never_sent": ("erp_post",),
                "duplicate": ("erp_post", "publish"), "late_delivery": ("erp_post",),
                "malformed": ("erp_post", "publish_malformed"),
            }  # fmt: skip
            index = self.add(planned, *steps[kind], mes=reaches_mes)
            if kind == "duplicate":
                self.duplicates.append(index)  # the second copy goes out at the end of the hour
            elif kind == "late_delivery":
                self.late.append(index)  # published after every later hour (see generate)
            self.record(slot, [event], erp=True, mes=reaches_mes)

    def record(self, slot: _FaultSlot, events: list[InventoryEvent], *, erp: bool, mes: bool,
               lacking: str | None = None) -> None:  # fmt: skip
        kind = FAULT_KINDS[slot.fault_type]
        effect = sum((delta for e in events for _, delta in e.stock_effects()), Decimal(0))
        first = events[0]
        moves = "; ".join(f"{e.transaction_type} {e.quantity} {e.unit} ({e.movement_type})" for e in events)
        self.faults.append(FaultEffect(
            slot.fault_id, slot.fault_type, tuple(e.transaction_id for e in events), first.material_number,
            first.material_type, first.location, first.unit, effect if erp else Decimal(0),
            effect if mes else Decimal(0), partition_key_of(first.timestamp), kind.expected_cause,
            (kind.expected_cause, *kind.acceptable_causes), lacking or kind.lacking_system,
            f"{kind.description}: {moves}",
        ))  # fmt: skip

    # --- the hour -------------------------------------------------------------------------------
    def hour(self, hour_start: datetime, slots: list[_FaultSlot]) -> None:
        rng, a = self.rng, ACTIVITY[self.plant.size]
        intents: list[tuple[datetime, int, Callable[[datetime], None]]] = []

        def at(step: Callable[[datetime], None]) -> None:
            # Minutes 3-53: after the opening stock, and clear of the count window at 55-58.
            ts = hour_start + timedelta(minutes=rng.randint(3, 53), seconds=rng.randint(0, 59))
            intents.append((ts, len(intents), step))

        for wh in self.plant.warehouses:
            for steps, n in ((self.purchase_receipt, rng.randint(a, 3 * a)), (self.transfer, rng.randint(a, 2 * a)),
                             (self.production_order, rng.randint(a, 3 * a)), (self.shipment, rng.randint(0, 2 * a)),
                             (self.mro_issue, rng.randint(0, a)),
                             (self.scrap, sum(rng.random() < 0.3 for _ in range(a))),
                             (self.adjustment, sum(rng.random() < 0.2 for _ in range(a)))):  # fmt: skip
                for _ in range(n):
                    at(lambda ts, steps=steps, wh=wh: steps(wh, ts))
        for slot in slots:
            at(lambda ts, slot=slot: self.inject(slot, ts))
        for ts, _, step in sorted(intents, key=lambda item: item[:2]):
            step(ts)
        self.actions += [Action("publish", i, "duplicate copy") for i in self.duplicates]
        self.duplicates = []
        counts = []
        for wh in self.plant.warehouses:
            keys = [(m, loc) for m, loc in self.plant.stock_keys() if loc.startswith(wh + "/")
                    and (m.number, loc) not in self.fault_keys and self.erp[(m.number, loc)] > 0]  # fmt: skip
            for _ in range(sum(rng.random() < 0.35 for _ in range(a))):
                counts.append(rng.choice(keys))
        if counts:
            # A count sets the balance, so the MES must have applied everything before it and must
            # apply it before anything after it: counts happen when the plant is quiet.
            self.actions.append(Action("checkpoint", note="before cycle counts"))
            for i, (m, location) in enumerate(dict.fromkeys(counts)):
                self.cycle_count(hour_start + timedelta(minutes=55, seconds=i * 7), m, location)
            self.actions.append(Action("checkpoint", note="after cycle counts"))


def generate(
    seed: int,
    start: datetime,
    hours: int,
    plant_size: str = "small",
    fault_profile: FaultProfile | str = "default",
    warehouses: tuple[str, ...] = WAREHOUSES,
) -> Simulation:
    """The plan of a simulated run: every event, in the order the run performs its actions."""
    if start.tzinfo is None or start.utcoffset() != timedelta(0) or start != start.replace(minute=0, second=0,
                                                                                          microsecond=0):  # fmt: skip
        raise ValueError(f"start={start.isoformat()}: give a whole hour in UTC, e.g. 2026-11-24T10:00:00+00:00")
    if hours < 1:
        raise ValueError(f"hours={hours}: simulate at least one hour")
    start = start.astimezone(UTC)
    profile = resolve_profile(fault_profile)
    plant = build_plant(plant_size, tuple(warehouses))
    # A string seed is hashed with SHA-512 by random.seed: the same on every machine and Python.
    rng = random.Random(f"invsync-plant:{seed}")
    planner = _Planner(seed, start, plant, rng)
    planner.opening_stock(start)
    slots = planner.fault_slots(profile, hours)
    for h in range(hours):
        planner.hour(start + timedelta(hours=h), [s for s in slots if s.hour == h])
    if planner.late:
        planner.actions.append(Action("checkpoint", note="every hour closed; late deliveries follow"))
        planner.actions += [Action("publish", i, "late delivery") for i in planner.late]
    return Simulation(seed, start, hours, plant, profile, tuple(planner.events), tuple(planner.actions),
                      tuple(planner.faults))  # fmt: skip
