"""Looking again at movements an earlier hour found in flight: have they arrived since?

A movement younger than the in-flight window when its hour was investigated is `in_flight`: it
may still be on its way, so nothing corrects it. Once its window has passed, the next hour that
still finds its material-location off asks, for each such movement, the pipeline (is it queued,
retrying, in the outbox?) and the system that lacked it (has it been applied or posted since?).
Only one that is still missing becomes a finding a correction may fix. The answers are kept in
``recon.in_flight_checks`` so a re-run of the hour decides the same.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from invsync_pipeline.recon.systems_now import arrived_in
from invsync_pipeline.sources.systems import Systems

CHECK_COLUMNS = ["partition_hour", "transaction_id", "material_number", "location", "unit", "system", "quantity",
                 "event_time", "in_flight_since", "cause_if_missing", "state", "checked_at"]  # fmt: skip


def look_again(
    systems: Systems, hour: datetime, due: pd.DataFrame, in_pipeline: set[str], checked_at: datetime
) -> pd.DataFrame:
    """``due`` (rows of sql/recon/in_flight_due.sql) with the state of each movement now:
    ``in_pipeline`` (still held by the outbox or a queue), ``arrived`` or ``missing``."""
    if due.empty:
        return pd.DataFrame(columns=CHECK_COLUMNS)
    states = []
    lacking: dict[str, set[str]] = {"MES": set(), "ERP": set()}
    for row in due.itertuples(index=False):
        if row.transaction_id not in in_pipeline:
            lacking[row.system].add(row.transaction_id)
    arrived = {(system, tx) for system, ids in lacking.items() for tx in arrived_in(systems, system, ids)}
    for row in due.itertuples(index=False):
        if row.transaction_id in in_pipeline:
            states.append("in_pipeline")
        else:
            states.append("arrived" if (row.system, row.transaction_id) in arrived else "missing")
    frame = due.assign(partition_hour=hour, state=states, checked_at=checked_at)
    return frame[CHECK_COLUMNS]
