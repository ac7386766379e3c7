"""Bringing a plant in: its material master and opening balances into the MES at a cut-off instant.

The balances come from the ERP (its stock as of the cut-off) or from a CSV file a plant prepared
(material_number, material_type, unit, location, quantity). Each material-location the MES does
not hold yet gets a count stamped just before the cut-off, so the MES's stock "as of the cut-off"
(strictly before it) is the opening balance and the first reconciled hour, which starts at the
cut-off, begins with both systems agreeing. Counts carry ids derived from the cut-off and the
key: a load run again writes nothing twice. A key the MES already holds with another balance is
reported and left alone (``overwrite`` sets it too).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from invsync_pipeline.contract import instant_text
from invsync_pipeline.settings import MATERIAL_TYPES
from invsync_pipeline.sources.balances import BalanceLoad, Key, erp_stock, mes_balances, set_balances, stamp
from invsync_pipeline.sources.erp import ErpApi
from invsync_pipeline.sources.mes import MesApi

CSV_COLUMNS = ("material_number", "material_type", "unit", "location", "quantity")
# The counts are stamped this much before the cut-off: "stock as of T" counts what is stamped before T.
BEFORE_CUTOFF = timedelta(seconds=1)


class OnboardingError(ValueError):
    """The cut-off or the balances cannot be used; the message names the line, field and value."""


@dataclass
class Onboarding:
    """What a load did (or, in a dry run, would do)."""

    cutoff: datetime
    source: str
    balances: int = 0  # material-locations in the source
    to_load: int = 0  # of those, ones the MES does not hold yet (or, with overwrite, holds otherwise)
    already_equal: int = 0
    disagreements: list[tuple[Key, Decimal, Decimal]] = field(default_factory=list)  # key, MES, wanted
    load: BalanceLoad | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": instant_text(self.cutoff), "first_hour": self.cutoff.strftime("%Y-%m-%d-%H:00"),
            "source": self.source, "balances": self.balances, "to_load": self.to_load,
            "already_equal": self.already_equal, "disagreements": len(self.disagreements), "dry_run": self.dry_run,
            **({"loaded": self.load.as_dict()} if self.load is not None else {}),
        }  # fmt: skip


def check_cutoff(cutoff: datetime) -> datetime:
    """The cut-off must be an aware whole hour: the first reconciled hour starts there."""
    if cutoff.tzinfo is None:
        raise OnboardingError(f"cutoff={cutoff.isoformat()!r}: give a time zone, e.g. 2026-12-01T06:00:00Z")
    if (cutoff.minute, cutoff.second, cutoff.microsecond) != (0, 0, 0):
        raise OnboardingError(
            f"cutoff={instant_text(cutoff)!r}: must be a whole hour (the first reconciled hour "
            "starts there), e.g. " + cutoff.replace(minute=0, second=0, microsecond=0).isoformat()
        )
    return cutoff


def read_balances_csv(path: Path) -> tuple[dict[Key, Decimal], dict[str, str]]:
    """(balance per key, material type per material) from a CSV with CSV_COLUMNS; an error
    names the line, the field and the value."""
    wanted: dict[Key, Decimal] = {}
    types: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise OnboardingError(f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                                  f"{', '.join(CSV_COLUMNS)}")  # fmt: skip
        for line, row in enumerate(reader, start=2):
            values = {c: (row.get(c) or "").strip() for c in CSV_COLUMNS}
            for column, value in values.items():
                if not value:
                    raise OnboardingError(f"{path} line {line}: {column} is empty")
            if values["material_type"] not in MATERIAL_TYPES:
                raise OnboardingError(f"{path} line {line}: material_type={values['material_type']!r} must be one "
                                      f"of {', '.join(MATERIAL_TYPES)}")  # fmt: skip
            if values["location"].count("/") != 1:
                raise OnboardingError(f"{path} line {line}: location={values['location']!r} must be "
                                      "WAREHOUSE/STORAGE_LOCATION, e.g. WH01/RM01")  # fmt: skip
            try:
                quantity = Decimal(values["quantity"])
            except InvalidOperation:
                quantity = Decimal("NaN")
            if not quantity.is_finite():
                raise OnboardingError(f"{path} line {line}: quantity={values['quantity']!r} must be a decimal number")
            key = (values["material_number"], values["location"], values["unit"])
            if key in wanted:
                raise OnboardingError(f"{path} line {line}: {key} is given twice")
            known = types.setdefault(values["material_number"], values["material_type"])
            if known != values["material_type"]:
                raise OnboardingError(f"{path} line {line}: material {values['material_number']} is {known} on an "
                                      f"earlier line and {values['material_type']} here")  # fmt: skip
            wanted[key] = quantity
    return wanted, types


def onboard(
    mes: MesApi,
    cutoff: datetime,
    *,
    erp: ErpApi | None = None,
    csv_path: Path | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
) -> Onboarding:
    """Load the opening balances as of ``cutoff`` into ``mes``, from ``erp`` or ``csv_path``."""
    cutoff = check_cutoff(cutoff)
    if (erp is None) == (csv_path is None):
        raise OnboardingError("give exactly one source of balances: the ERP (--from-erp) or a CSV file (--csv)")
    if csv_path is not None:
        wanted, types = read_balances_csv(csv_path)
        source = f"csv:{csv_path}"
    else:
        wanted, types = erp_stock(erp, cutoff)  # type: ignore[arg-type]
        source = "erp"
    at = cutoff - BEFORE_CUTOFF
    held = mes_balances(mes, cutoff)
    result = Onboarding(cutoff, source, balances=len(wanted), dry_run=dry_run)
    load: dict[Key, Decimal] = {}
    for key, quantity in sorted(wanted.items()):
        current = held.get(key)
        if (current or Decimal(0)) == quantity:
            result.already_equal += 1  # a zero the MES does not hold is no balance to load
        elif not current or overwrite:
            load[key] = quantity
        else:
            result.disagreements.append((key, current, quantity))
    result.to_load = len(load)
    if not dry_run and load:
        current = {key: held.get(key, Decimal(0)) for key in load}
        result.load = set_balances(mes, load, types, MATERIAL_TYPES, at, "ONBOARD", f"ONBOARD-{stamp(cutoff)}",
                                   current=current)  # fmt: skip
    return result
