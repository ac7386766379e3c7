"""The hourly partitions (UTC) every reconciliation asset shares."""

from __future__ import annotations

import os

import dagster as dg

# The first hour the pipeline knows about; events before it are staged but never loaded.
FIRST_HOUR = os.environ.get("INVSYNC_FIRST_HOUR", "2025-01-01-00:00")

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=FIRST_HOUR, timezone="UTC")

# The cutover compares the systems once a day (UTC), from the same first day.
daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_HOUR[:10], timezone="UTC")
