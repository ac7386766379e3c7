"""The evidence a supervisor needs to decide a held correction, captured by the run that holds it.

The run has DuckDB open when it holds an item; the review page never opens DuckDB (a run may be
writing), so the facts are copied into the review store as they were at that moment: both
systems' balances, the movements behind the variance with their transaction_ids, the key's
recent hours, the value at stake and the proposed correction with the rule that proposed it.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import duckdb

from invsync_pipeline.recon.corrections import Correction

_BALANCES = ["erp_begin", "erp_ledger_net", "erp_end", "erp_three_way", "mes_begin", "mes_ledger_net", "mes_end",
             "mes_three_way", "cross_difference", "pct_difference", "unit_cost", "value_difference"]  # fmt: skip
_RECENT = ["partition_hour", "erp_end", "mes_end", "cross_difference", "erp_three_way", "mes_three_way"]


def evidence(conn: duckdb.DuckDBPyConnection, c: Correction, recent_hours: int) -> dict:
    """Plain JSON-able facts (decimals and instants as text) about one correction's variance."""
    key = [c.material_number, c.location, c.unit]
    row = conn.execute(
        f"""SELECT {", ".join(_BALANCES)} FROM recon.variances
            WHERE partition_hour = ? AND material_number = ? AND location = ? AND unit = ?""",
        [c.partition_hour, *key],
    ).fetchone()
    balances = dict(zip(_BALANCES, (_plain(v) for v in row), strict=True)) if row else {}
    # The movements the finding names, with what the ledger knows of each (a movement never
    # published is known from the ERP only: then only its share of the variance is shown).
    movements = conn.execute(
        """SELECT m.transaction_id, m.system AS missing_in, m.quantity AS share, m.event_time,
                  e.source_system, e.transaction_type, e.reason, e.quantity, e.erp_reference, m.detail
           FROM recon.explained_movements m
           LEFT JOIN (SELECT DISTINCT ON (transaction_id) * FROM staging.inventory_events
                      WHERE list_contains(?, transaction_id)) e USING (transaction_id)
           WHERE m.partition_hour = ? AND m.material_number = ? AND m.location = ? AND m.unit = ? AND m.cause = ?
           ORDER BY m.event_time, m.transaction_id""",
        [list(c.explained_by), c.partition_hour, *key, c.cause],
    )
    names = [d[0] for d in movements.description]
    found = [dict(zip(names, (_plain(v) for v in r), strict=True)) for r in movements.fetchall()]
    listed = {m["transaction_id"] for m in found}
    found += [{"transaction_id": tx} for tx in c.explained_by if tx not in listed]
    recent = conn.execute(
        f"""SELECT {", ".join(_RECENT)} FROM recon.variances
            WHERE partition_hour BETWEEN ? AND ? AND material_number = ? AND location = ? AND unit = ?
            ORDER BY partition_hour""",
        [c.partition_hour - timedelta(hours=recent_hours - 1), c.partition_hour, *key],
    ).fetchall()
    return {
        "balances": balances,
        "movements": found,
        "recent_hours": [dict(zip(_RECENT, (_plain(v) for v in r), strict=True)) for r in recent],
        "proposed": {
            "target_system": c.target_system,
            "quantity": str(c.quantity),
            "method": c.method,
            "truth": c.truth,
            "rule": c.rule,
            "pct_of_balance": _plain(c.pct_of_balance),
            "value": _plain(c.value),
        },  # fmt: skip
    }


def _plain(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
