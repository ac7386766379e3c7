"""The reference plant: materials, warehouses, storage locations and the opening stock the simulator starts from.

Everything here is fixed data, not drawn from the seed: the same plant is simulated with every
seed, so runs of different seeds are comparable and a material number means the same thing in
each. Two sizes: ``small`` (12 materials, quick tests) and ``medium`` (34 materials).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Literal

PlantSize = Literal["small", "medium"]
PLANT_SIZES: tuple[str, ...] = ("small", "medium")
# The plants of data/invsync.yaml; a config with other plants passes its own warehouse codes.
WAREHOUSES: tuple[str, ...] = ("WH01", "WH02")

# Every warehouse has the same storage locations, as sister plants of one company usually do.
RAW_STORE, PACKAGING_STORE, MRO_STORE, PRODUCTION_SUPPLY, FINISHED_GOODS = "RM01", "PK01", "MR01", "PS01", "FG01"
HOME_STORAGE = {"raw": RAW_STORE, "packaging": PACKAGING_STORE, "mro": MRO_STORE, "wip": PRODUCTION_SUPPLY,
                "finished": FINISHED_GOODS}  # fmt: skip
# Units a material's base unit can be mis-sent in (a uom_mismatch): the smaller unit and its factor.
SMALLER_UNIT: dict[str, tuple[str, Decimal]] = {"KG": ("G", Decimal(1000)), "L": ("ML", Decimal(1000)),
                                                "M": ("MM", Decimal(1000))}  # fmt: skip
_DECIMALS = {"KG": 3, "L": 3, "M": 1, "EA": 0}
# SAP-like material number ranges per type (internal numbering by material type).
_NUMBER_BASE = {"raw": 10_000_100, "packaging": 20_000_100, "wip": 30_000_100, "finished": 40_000_100,
                "mro": 90_000_100}  # fmt: skip
# Opening stock, in lots, at the home storage location (and at production supply for components).
_OPENING_LOTS = {"raw": 30, "packaging": 25, "mro": 20, "wip": 10, "finished": 20}
_OPENING_SUPPLY_LOTS = 6

# (description, base unit, unit cost in EUR, typical movement (lot), ABC class)
_CATALOG: dict[str, list[tuple[str, str, str, str, str]]] = {
    "raw": [
        ("Steel coil DC01 1.5 mm", "KG", "1.85", "250", "A"),
        ("Polypropylene granulate", "KG", "2.40", "120", "A"),
        ("Hydraulic oil HLP 46", "L", "3.10", "40", "B"),
        ("Copper wire 2.5 mm2", "M", "0.95", "300", "B"),
        ("Aluminium sheet 2 mm", "KG", "4.20", "80", "A"),
        ("Epoxy resin", "KG", "9.50", "20", "B"),
        ("PVC tube 20 mm", "M", "1.20", "150", "C"),
        ("Cutting fluid", "L", "2.20", "30", "C"),
        ("Zinc die-cast alloy", "KG", "3.30", "60", "B"),
        ("Stainless bar 304 D20", "M", "14.00", "24", "A"),
        ("Silicone sealant", "L", "11.00", "10", "C"),
        ("Brass rod CW614N", "KG", "6.80", "40", "B"),
    ],
    "packaging": [
        ("Corrugated box 600x400x400", "EA", "0.85", "200", "C"),
        ("Stretch film 23 um", "M", "0.03", "1500", "C"),
        ("Euro pallet 1200x800", "EA", "9.50", "20", "B"),
        ("Label roll 100x150", "EA", "6.00", "10", "C"),
        ("PE bag 300x400", "EA", "0.05", "500", "C"),
        ("Edge protector", "M", "0.40", "100", "C"),
    ],
    "wip": [
        ("Housing, machined", "EA", "18.00", "40", "B"),
        ("Rotor assembly", "EA", "42.00", "20", "A"),
        ("Painted frame", "EA", "25.00", "30", "B"),
        ("Wound stator", "KG", "12.00", "25", "A"),
    ],
    "finished": [
        ("Pump P-200", "EA", "240.00", "10", "A"),
        ("Valve V-50", "EA", "65.00", "30", "B"),
        ("Filter F-10", "EA", "12.00", "60", "C"),
        ("Motor M-1.5kW", "EA", "180.00", "12", "A"),
        ("Compressor C-3", "EA", "520.00", "5", "A"),
        ("Gear unit G-40", "EA", "310.00", "8", "A"),
    ],
    "mro": [
        ("Bearing 6204-2RS", "EA", "4.20", "10", "C"),
        ("Grease EP2", "L", "6.50", "5", "C"),
        ("V-belt SPA 1250", "EA", "8.00", "4", "C"),
        ("Safety gloves", "EA", "1.20", "20", "C"),
        ("Drill bit HSS 8 mm", "EA", "3.50", "10", "C"),
        ("Coolant concentrate", "L", "4.00", "10", "C"),
    ],
}
_PER_TYPE = {
    "small": {"raw": 4, "packaging": 2, "wip": 1, "finished": 3, "mro": 2},
    "medium": {"raw": 12, "packaging": 6, "wip": 4, "finished": 6, "mro": 6},
}
# How much more happens per hour in a bigger plant.
ACTIVITY = {"small": 1, "medium": 3}


@dataclass(frozen=True)
class Material:
    """A material master as the ERP keeps it (MARA/MBEW), plus the size of a typical movement."""

    number: str
    description: str
    material_type: str
    unit: str
    unit_cost: Decimal
    abc_class: str
    lot: Decimal

    @property
    def decimals(self) -> int:
        return _DECIMALS[self.unit]

    def quantity(self, value: float | Decimal) -> Decimal:
        """``value`` rounded down to the unit's precision (whole pieces for EA); may be 0."""
        step = Decimal(1).scaleb(-self.decimals)
        return Decimal(str(value)).quantize(step, rounding=ROUND_DOWN)

    def lots(self, low: float, high: float, fraction: float) -> Decimal:
        """A quantity between ``low`` and ``high`` lots, ``fraction`` (0..1) of the way; at least one step."""
        amount = self.quantity(self.lot * Decimal(str(low + (high - low) * fraction)))
        return max(amount, Decimal(1).scaleb(-self.decimals))


@dataclass(frozen=True)
class Plant:
    """The materials and warehouses of the reference plant."""

    size: str
    warehouses: tuple[str, ...]
    materials: tuple[Material, ...]

    def of_type(self, *types: str) -> tuple[Material, ...]:
        return tuple(m for m in self.materials if m.material_type in types)

    def material(self, number: str) -> Material:
        return next(m for m in self.materials if m.number == number)

    @staticmethod
    def home(material: Material, warehouse: str) -> str:
        """Where the material is stored: raw store, packaging store, MRO store, production, finished goods."""
        return f"{warehouse}/{HOME_STORAGE[material.material_type]}"

    @staticmethod
    def supply(warehouse: str) -> str:
        """Production supply: components are transferred here and consumed by production orders."""
        return f"{warehouse}/{PRODUCTION_SUPPLY}"

    def stock_keys(self) -> list[tuple[Material, str]]:
        """Every (material, location) that holds stock, in a fixed order."""
        keys = []
        for warehouse in self.warehouses:
            for material in self.materials:
                keys.append((material, self.home(material, warehouse)))
                if material.material_type in ("raw", "packaging"):
                    keys.append((material, self.supply(warehouse)))
        return keys

    def opening_stock(self) -> list[tuple[Material, str, Decimal]]:
        """The stock each (material, location) starts with, before the first simulated hour."""
        stock = []
        for material, location in self.stock_keys():
            at_home = location == self.home(material, location.split("/")[0])
            lots = _OPENING_LOTS[material.material_type] if at_home else _OPENING_SUPPLY_LOTS
            stock.append((material, location, material.quantity(material.lot * lots)))
        return stock


def build_plant(size: str = "small", warehouses: tuple[str, ...] = WAREHOUSES) -> Plant:
    """The reference plant of ``size`` (small or medium) with the given warehouses."""
    if size not in _PER_TYPE:
        raise ValueError(f"plant_size={size!r}: use one of {', '.join(PLANT_SIZES)}")
    if not warehouses:
        raise ValueError("the plant needs at least one warehouse (the plants in the config's topology)")
    materials = []
    for material_type, count in _PER_TYPE[size].items():
        for index, (description, unit, cost, lot, abc) in enumerate(_CATALOG[material_type][:count]):
            materials.append(
                Material(str(_NUMBER_BASE[material_type] + index * 7), description, material_type, unit,
                         Decimal(cost), abc, Decimal(lot))
            )  # fmt: skip
    return Plant(size, tuple(warehouses), tuple(materials))
