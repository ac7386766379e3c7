"""The hourly partitions (UTC) every reconciliation asset shares, and the daily ones of the cutover.

They start at ``FIRST_PARTITION``, a constant: Dagster needs the partitions when the code
loads, and nothing is read from the configuration then. A plant's own first reconciled hour is
``reconciliation.first_hour`` (set by `invsync onboard`): the sensor and the schedule leave the
hours before it alone.
"""

from __future__ import annotations

import dagster as dg

from invsync_pipeline.settings import FIRST_PARTITION

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=FIRST_PARTITION, timezone="UTC")

# The cutover compares the systems once a day (UTC), from the same first day.
daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_PARTITION[:10], timezone="UTC")
