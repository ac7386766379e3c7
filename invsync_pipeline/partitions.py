"""The hourly partitions (UTC) every reconciliation asset shares, and the daily ones of the cutover.

They start at ``FIRST_PARTITION``, a constant: Dagster needs the partitions when the code
loads, and nothing is read from the configuration then. A plant's own first reconciled hour is
``reconciliation.first_hour`` (set by `invsync onboard`): the sensor and the schedule leave the
hours before it alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from invsync_pipeline.settings import FIRST_PARTITION

PARTITION_FORMAT = "%Y-%m-%d-%H:%M"  # Dagster's hourly partition keys

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=FIRST_PARTITION, timezone="UTC")

# The cutover compares the systems once a day (UTC), from the same first day.
daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_PARTITION[:10], timezone="UTC")


def partition_key_of(ts: datetime) -> str:
    """The hourly partition key of an instant (its UTC hour)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%d-%H:00")


def hour_bounds(partition_key: str) -> tuple[datetime, datetime]:
    """[start, end) of an hourly partition, in UTC."""
    start = datetime.strptime(partition_key, PARTITION_FORMAT).replace(tzinfo=UTC)
    return start, start + timedelta(hours=1)
