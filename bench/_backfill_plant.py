"""The plant behind bench/_backfill_data.py and the part of its history planned in Python: the
material master and material-locations, each hour's injected discrepancies (each on a
material-location of its own), what the investigation finds about them, and the corrections the live
pipeline, or later a supervisor, decided for them with their audit trail."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd

from invsync_pipeline.recon.corrections import _method, correction_id
from invsync_pipeline.recon.rules import Rules

# Injected per hour (scaled down for very small plants). applied_twice is what the investigation
# cannot explain: it finds `unexplained`.
DISCREPANCIES = {"unit_mismatch": 1, "missing_in_erp": 2, "missing_in_mes": 14, "late_delivery": 3,
                 "pending_sync": 1, "retrying": 1, "not_published": 2, "applied_twice": 2}  # fmt: skip
EXPECTED_CAUSE = {**{kind: kind for kind in DISCREPANCIES}, "applied_twice": "unexplained"}
TIMING = {"late_delivery", "pending_sync", "retrying"}
UNIT_MISMATCH_MAX_VALUE = 900  # EUR of a unit-mismatched receipt: x1000 in the smaller unit stays below 1e6
SUPERVISORS = ("M. Keller", "A. Novak", "J. Smith")

# Material master: type shares (%), base units, smaller units a message may carry, and how much
# a typical movement (lot) is, in units; unit cost in cents.
TYPES = (("raw", 35), ("packaging", 15), ("wip", 15), ("finished", 20), ("mro", 15))
UNITS = {"raw": ("KG", "KG", "L", "M"), "packaging": ("EA", "EA", "M"), "wip": ("EA", "EA", "KG"),
         "finished": ("EA",), "mro": ("EA", "EA", "L")}  # fmt: skip
SMALLER_UNIT = {"KG": "G", "L": "ML", "M": "MM", "EA": "EA"}
STEP_MILLI = {"EA": 1000, "M": 100, "KG": 1, "L": 1}
LOT_UNITS = {"EA": (5, 100), "M": (50, 1000), "KG": (20, 500), "L": (10, 200)}
COST_CENTS = {"raw": (50, 1500), "packaging": (2, 1000), "wip": (1000, 6000), "finished": (1000, 60000),
              "mro": (100, 1000)}  # fmt: skip
STORES = {"raw": ("RM01", "PS01"), "packaging": ("PK01", "PS01"), "wip": ("WP01", "PS01"),
          "finished": ("FG01", "SH01"), "mro": ("MR01", "MR02")}  # fmt: skip
NUMBER_PREFIX = {"raw": "1", "packaging": "2", "wip": "3", "finished": "4", "mro": "9"}


@dataclass(frozen=True)
class _Key:
    k: int
    slot: int  # 0 home store, 1 consuming store
    material_number: str
    material_type: str
    location: str
    unit: str
    alt_unit: str
    lot_milli: int
    step_milli: int
    unit_cost: Decimal
    abc_class: str


@dataclass
class _Discrepancy:
    hour: int
    kind: str
    key: _Key
    seq: int
    transaction_type: str
    reason: str
    source: str
    q_milli: int  # > 0, in the base unit
    t_us: int
    r_ref: int
    transaction_id: str = ""

    @property
    def effect(self) -> int:
        return self.q_milli if self.transaction_type == "receipt" else -self.q_milli


def _plant(material_locations: int, events_per_hour: int, hours: int, seed: int) -> tuple[list[_Key], pd.DataFrame]:
    """Material master and material-locations: key k is pair k // 2 (material k // 4 in WH01 or
    WH02), store k % 2; each key's opening stock grows with how busy its pair is."""
    rng = random.Random(f"invsync-backfill-plant:{seed}")
    pairs = (material_locations + 1) // 2
    materials = []
    for m in range((pairs + 1) // 2):
        material_type = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
        unit = rng.choice(UNITS[material_type])
        low, high = (2, 30) if material_type == "finished" else LOT_UNITS[unit]
        cents = rng.randint(*COST_CENTS[material_type])
        abc = "A" if cents >= COST_CENTS[material_type][1] * 0.7 else rng.choice("BCC")
        materials.append((f"{NUMBER_PREFIX[material_type]}{m:07d}", material_type, unit, rng.randint(low, high) * 1000,
                          Decimal(cents) / 100, abc))  # fmt: skip
    keys, rows = [], []
    for k in range(material_locations):
        p, slot = divmod(k, 2)
        number, material_type, unit, lot, cost, abc = materials[p // 2]
        key = _Key(k, slot, number, material_type, f"WH0{p % 2 + 1}/{STORES[material_type][slot]}", unit,
                   SMALLER_UNIT[unit], lot, STEP_MILLI[unit], cost, abc)  # fmt: skip
        share = ((p + 1) / pairs) ** (2 / 3) - (p / pairs) ** (2 / 3)  # of the hour's events
        opening = lot * round(30 + 6 * math.sqrt(events_per_hour * share * hours))
        keys.append(key)
        rows.append((k, p, slot, number, material_type, unit, key.alt_unit, STEP_MILLI[unit], lot, key.location,
                     key.location[:4].lower(), {"raw": "raw", "finished": "finished"}.get(material_type, "other"),
                     opening))  # fmt: skip
    columns = ["k", "p", "slot", "material_number", "material_type", "unit", "alt_unit", "step_milli", "lot_milli",
               "location", "wh_lc", "queue", "opening"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    return keys, frame


def _materials(keys: list[_Key], taken_at: datetime) -> pd.DataFrame:
    seen = {k.material_number: k for k in keys}
    return pd.DataFrame([(n, k.material_type, k.unit, str(k.unit_cost), "EUR", k.abc_class, taken_at)
                         for n, k in seen.items()],
                        columns=["material_number", "material_type", "base_unit", "unit_cost", "currency", "abc_class",
                                 "taken_at"])  # fmt: skip


def _plan(h: int, keys: list[_Key], busy_until: dict[int, int], rng: random.Random, scale: float) -> list[_Discrepancy]:
    """This hour's discrepancies, each on a material-location with nothing else open."""
    planned: list[_Discrepancy] = []
    for kind, per_hour in DISCREPANCIES.items():
        for _ in range(round(per_hour * scale)):
            for _attempt in range(500):
                key = keys[rng.randrange(len(keys))]
                if busy_until.get(key.k, -1) >= h:
                    continue
                if kind == "unit_mismatch" and (key.slot != 0 or key.alt_unit == key.unit):
                    continue
                if kind == "missing_in_erp" and (key.slot != 1 or key.material_type not in ("raw", "packaging", "wip")):
                    continue
                break
            else:
                continue  # a plant this small has no free material-location left
            busy_until[key.k] = h + 1
            if key.slot == 0:
                kind_of, reason = "receipt", ("production_receipt" if key.material_type in ("wip", "finished")
                                              else "purchase_receipt")  # fmt: skip
            else:
                kind_of, reason = "issue", "shipment" if key.material_type == "finished" else "production_consumption"
            q = max(key.step_milli, key.lot_milli * rng.randint(500, 1500) // 1000 // key.step_milli * key.step_milli)
            if kind == "unit_mismatch":
                # variance_report values the row in the smaller unit at the base unit's cost, in
                # DECIMAL(18,12): 1,000,000 or more overflows it, so these receipts stay small.
                most = int(UNIT_MISMATCH_MAX_VALUE * 1000 / key.unit_cost) // key.step_milli * key.step_milli
                q = min(q, max(key.step_milli, most))
            planned.append(_Discrepancy(h, kind, key, -1, kind_of, reason,
                                        "MES" if kind == "missing_in_erp" else "ERP", q,
                                        rng.randrange(300, 3000) * 1_000_000, rng.getrandbits(60)))  # fmt: skip
    return planned


def _findings(d: _Discrepancy, erp_end: int, mes_end: int, alt_end: int) -> list[tuple]:
    """What the investigation will say about a discrepancy, as correction candidates:
    (unit, system, cause, explained milli, transaction_ids, reason, erp_end, mes_end)."""
    key, tx = d.key, [d.transaction_id]
    if d.kind in TIMING:
        return []
    if d.kind == "missing_in_erp":
        return [(key.unit, "ERP", d.kind, d.effect, tx, d.reason, erp_end, mes_end)]
    if d.kind == "unit_mismatch":
        return [(key.unit, "MES", d.kind, d.effect, tx, d.reason, erp_end, mes_end),
                (key.alt_unit, "ERP", d.kind, d.effect * 1000, tx, d.reason, 0, alt_end)]  # fmt: skip
    if d.kind == "applied_twice":
        return [(key.unit, "MES", "unexplained", erp_end - mes_end, [], None, erp_end, mes_end)]
    return [(key.unit, "MES", d.kind, d.effect, tx, d.reason, erp_end, mes_end)]


def _milli(value: int) -> Decimal:
    return Decimal(value).scaleb(-3)


def _decide(rules: Rules, hour: datetime, key: _Key, finding: tuple) -> dict:
    """The decision recon/corrections.py `decide` takes on a finding (same rules, same arithmetic)."""
    unit, system, cause, explained, tx_ids, reason, erp_end, mes_end = finding
    q, erp, mes = _milli(explained), _milli(erp_end), _milli(mes_end)
    rule = rules.truth_for(reason)
    other = "ERP" if system == "MES" else "MES"
    target, quantity = (system, q) if rule.truth == other else (other, -q)
    base = max(abs(erp), abs(mes))
    pct = (abs(quantity) / base * 100).quantize(Decimal("0.0001")) if base else Decimal(100)
    value = (abs(quantity) * key.unit_cost).quantize(Decimal("0.01"))
    threshold = rules.threshold_for(key.material_type, key.abc_class)
    critical = pct > Decimal(str(threshold.critical_pct)) or value > Decimal(str(threshold.critical_value))
    method = _method(cause, target == system, True, rules)  # its movements are all in the staged log
    if cause in rules.always_review:
        note = f"cause {cause} always waits for a person"
    elif critical:
        note = (f"critical: {pct}% of the balance (limit {threshold.critical_pct}%), "
                f"value {value} (limit {threshold.critical_value})")  # fmt: skip
    else:
        note = None
    return {"correction_id": correction_id(hour, key.material_number, key.location, unit, cause, tx_ids),
            "partition_hour": hour, "material_number": key.material_number, "material_type": key.material_type,
            "location": key.location, "unit": unit, "cause": cause, "target_system": target, "quantity": quantity,
            "truth": rule.truth, "rule": rule.name, "pct_of_balance": pct, "value": value, "critical": critical,
            "status": "held_for_review" if critical or cause in rules.always_review or method == "count" else "applied",
            "decided_by": f"auto:{rule.name}", "before_quantity": erp if target == "ERP" else mes,
            "explained_by": sorted(tx_ids), "note": note,
            "method": method}  # fmt: skip


def _record(c: dict, held: bool, resolved: bool, decided_us: int, effective: datetime, rng: random.Random,
            corrections: list[dict], audit: list[tuple]) -> None:  # fmt: skip
    """The correction row and its audit trail as the live run (and a supervisor) left them."""
    decided = datetime.fromtimestamp(decided_us / 1e6, UTC)
    before, quantity = c["before_quantity"], c["quantity"]

    def trail(at: datetime, action: str, actor: str, after: Decimal | None, note: str | None) -> tuple:
        return (at, c["correction_id"], action, actor, c["partition_hour"], c["material_number"], c["location"],
                c["unit"], c["target_system"], quantity, c["rule"], c["cause"], before, after, c["explained_by"],
                note)  # fmt: skip

    if not held:
        c.update(decided_at=decided, after_quantity=before + quantity, effective_at=effective)
        audit.append(trail(decided, "applied", c["decided_by"], before + quantity, c["note"]))
    else:
        audit.append(trail(decided, "held", c["decided_by"], None, c["note"]))
        c.update(decided_at=decided, after_quantity=None, effective_at=None)
        if resolved:
            actor = f"supervisor:{rng.choice(SUPERVISORS)}"
            note = "counted again; the ERP figure is right"
            c.update(status="approved", decided_by=actor, decided_at=effective, after_quantity=before + quantity,
                     effective_at=effective, note=note)  # fmt: skip
            audit.append(trail(effective, "approved", actor, before + quantity, note))
    corrections.append(c)
