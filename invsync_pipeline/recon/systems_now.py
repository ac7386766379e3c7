"""What the ERP and the MES say now about a few movements and one material-location.

Reconciliation asks this when it looks again at a movement found in flight, when the hourly run
checks whether a held correction's variance has resolved itself, and before a supervisor's
approval is carried out. The MES asked is the one the event-driven path writes now.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from invsync_pipeline.settings import Settings


def arrived_in(settings: Settings, system: str, transaction_ids: Iterable[str]) -> set[str]:
    """The transaction ids that ``system`` (ERP | MES) has applied or posted by now."""
    wanted = sorted(set(transaction_ids))
    if not wanted:
        return set()
    if system == "MES":
        from invsync_pipeline.cutover.switch import event_path_mes

        _, mes_client = event_path_mes(settings)
        with mes_client as mes:
            return {tx for tx in wanted if mes.find_transaction(tx) is not None}
    from invsync_pipeline.sources.erp import ErpDatabase

    erp = ErpDatabase.from_settings(settings)
    try:
        return {tx for tx in wanted if erp.posting(tx) is not None}
    finally:
        erp.dispose()


def balances_now(settings: Settings, material: str, location: str, unit: str) -> tuple[Decimal, Decimal]:
    """(ERP, MES) stock of one material-location in one unit, now."""
    from invsync_pipeline.cutover.switch import event_path_mes
    from invsync_pipeline.sources.erp import ErpDatabase

    erp = ErpDatabase.from_settings(settings)
    try:
        stock = erp.stock_as_of(None, location.split("/")[0], include_zero=True, material=material)
    finally:
        erp.dispose()
    here = stock[(stock["location"] == location) & (stock["unit"] == unit)]
    erp_quantity = sum((Decimal(str(q)) for q in here["quantity"]), Decimal(0))
    _, mes_client = event_path_mes(settings)
    with mes_client as mes:
        rows = [r for r in mes.stock(location=location, material_number=material) if r.unit == unit]
    return erp_quantity, sum((r.quantity for r in rows), Decimal(0))
