"""Running an hourly asset over one hour or a whole range of hours in one run.

The hourly assets have a single-run backfill policy: a backfill of three weeks is one run, not
504, and each asset goes through its hours in order (so an hour sees the one before it). The
run's log says how far it got; each hour's (or chunk's) figures are in the log too, and the
materialization of a range carries their sums.

Two ways through a range:

- ``each_hour``: one call per hour, for assets whose hour depends on the hour before it (the
  investigation's ``carried_over``, corrections) or that talk to other systems per hour.
- ``each_chunk``: one call per run of up to ``CHUNK_HOURS`` consecutive hours, for assets whose
  SQL treats every hour on its own and takes a range (``$first_hour``..``$last_hour``). One
  statement over a day costs about what one statement over an hour does, so a 3-week backfill
  runs 21 statements instead of 504 (bench/backfill.py). A one-hour run is a chunk of one: the
  same SQL, so a backfill equals the live run.
"""

import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import dagster as dg

from invsync_pipeline.partitions import hour_bounds, hourly_partitions
from invsync_pipeline.plant_scope import ASSET_KEY_PREFIX
from invsync_pipeline.warehouse import DUCKDB_WRITER_POOL

# Single-run backfills are "beta" in Dagster 1.13; they are what makes a 3-week backfill one
# run, so say it once here instead of once per asset on every load.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

# Hourly assets backfill a range in one run (see the module docstring).
SINGLE_RUN = dg.BackfillPolicy.single_run()


def hourly_asset(**kwargs):
    """``dg.asset`` for an hourly asset that writes DuckDB: the hourly partitions, one run per
    backfill (this module), and the DuckDB writers' pool (one writing run at a time); in a
    plant's code location, the plant's key prefix and pool (plant_scope.py)."""
    return dg.asset(partitions_def=hourly_partitions, backfill_policy=SINGLE_RUN, pool=DUCKDB_WRITER_POOL,
                    key_prefix=ASSET_KEY_PREFIX, **kwargs)  # fmt: skip


# Hours per statement in a ranged run (24 consecutive hours, not calendar days). A chunk of the
# bench plant (2.4M events) stays under 4 GB with duckdb.memory_limit set to that.
CHUNK_HOURS = 24


def each_hour(
    context: dg.AssetExecutionContext, one_hour: Callable[[str], dg.MaterializeResult]
) -> dg.MaterializeResult:
    """``one_hour(partition_key)`` for every hour of the run, in order; one result for them all."""
    keys = context.partition_keys
    if len(keys) == 1:
        return one_hour(keys[0])
    return _over_range(context, [[key] for key in keys], lambda chunk: one_hour(chunk[0]))


def each_chunk(
    context: dg.AssetExecutionContext,
    hours: Callable[[Sequence[str]], dg.MaterializeResult],
    *,
    chunk_hours: int | None = None,
) -> dg.MaterializeResult:
    """``hours(partition_keys)`` for consecutive chunks of up to ``chunk_hours`` (default
    ``CHUNK_HOURS``) hours of the run, in order; one result for them all (a one-hour run gets
    that hour's result as is). ``hours`` may rebuild everything from its first hour to its last
    (``chunk_bounds``), so the run's hours must follow each other without a gap."""
    keys = context.partition_keys
    if len(keys) == 1:
        return hours(keys)
    starts = [hour_bounds(key)[0] for key in keys]
    for before, after in zip(starts, starts[1:], strict=False):
        if after - before != timedelta(hours=1):
            raise ValueError(f"partition keys: {after:%Y-%m-%d-%H:%M} does not follow {before:%Y-%m-%d-%H:%M}; "
                             "a ranged run takes consecutive hours")  # fmt: skip
    size = chunk_hours or CHUNK_HOURS
    chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
    return _over_range(context, chunks, hours)


def chunk_bounds(partition_keys: Sequence[str]) -> tuple[datetime, datetime]:
    """(start of the first hour, start of the last hour) of consecutive hourly keys: the
    ``$first_hour``/``$last_hour`` of the SQL (``partition_hour BETWEEN`` them)."""
    return hour_bounds(partition_keys[0])[0], hour_bounds(partition_keys[-1])[0]


def _over_range(
    context: dg.AssetExecutionContext,
    chunks: Sequence[Sequence[str]],
    run: Callable[[Sequence[str]], dg.MaterializeResult],
) -> dg.MaterializeResult:
    keys = [key for chunk in chunks for key in chunk]
    totals: dict[str, float] = {}
    done = 0
    for chunk in chunks:
        result = run(chunk)
        for name, value in (result.metadata or {}).items():
            raw = getattr(value, "value", value)
            # Sums of counts and amounts mean something over a range; sums of percentages do not.
            if isinstance(raw, int | float) and not isinstance(raw, bool) and not name.endswith("_pct"):
                totals[name] = totals.get(name, 0) + raw
        reported = done // 24
        done += len(chunk)
        if done // 24 > reported or done == len(keys):
            name = context.asset_key.to_user_string()
            context.log.info(f"{name}: {done} of {len(keys)} hours done (up to {chunk[-1]})")
    metadata: dict[str, object] = {"hours": len(keys), "first_hour": keys[0], "last_hour": keys[-1]}
    metadata.update({f"{name} (sum of hours)" if not name.startswith("dagster/") else name: value
                     for name, value in totals.items()})  # fmt: skip
    return dg.MaterializeResult(metadata=metadata)
