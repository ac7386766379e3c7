"""What the ERP and the MES say now about a few movements and one material-location.

Reconciliation asks this when it looks again at a movement found in flight, when the hourly run
checks whether a held correction's variance has resolved itself, and before a supervisor's
approval is carried out. The caller hands in the systems (the MES the event-driven path writes
now, from ``MesResource.event_path``).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from invsync_pipeline.sources.systems import Systems


def arrived_in(systems: Systems, system: str, transaction_ids: Iterable[str]) -> set[str]:
    """The transaction ids that ``system`` (ERP | MES) has applied or posted by now."""
    wanted = sorted(set(transaction_ids))
    if system == "MES":
        return {tx for tx in wanted if systems.mes.find_transaction(tx) is not None}
    return {tx for tx in wanted if systems.erp.posting(tx) is not None}


def balances_now(systems: Systems, material: str, location: str, unit: str) -> tuple[Decimal, Decimal]:
    """(ERP, MES) stock of one material-location in one unit, now."""
    stock = systems.erp.stock_as_of(None, location.split("/")[0], include_zero=True, material=material)
    here = stock[(stock["location"] == location) & (stock["unit"] == unit)]
    erp_quantity = sum((Decimal(str(q)) for q in here["quantity"]), Decimal(0))
    rows = [r for r in systems.mes.stock(location=location, material_number=material) if r.unit == unit]
    return erp_quantity, sum((r.quantity for r in rows), Decimal(0))
