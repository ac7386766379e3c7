"""Running an hourly asset over one hour or a whole range of hours in one run.

The hourly assets have a single-run backfill policy: a backfill of three weeks is one run, not
504, and each asset goes through its hours in order (so an hour sees the one before it). The
run's log says how far it got; each hour's figures are in the log too, and the materialization
of a range carries their sums.
"""

import warnings
from collections.abc import Callable

import dagster as dg

# Single-run backfills are "beta" in Dagster 1.13; they are what makes a 3-week backfill one
# run, so say it once here instead of once per asset on every load.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

# Hourly assets backfill a range in one run (see the module docstring).
SINGLE_RUN = dg.BackfillPolicy.single_run()


def each_hour(
    context: dg.AssetExecutionContext, one_hour: Callable[[str], dg.MaterializeResult]
) -> dg.MaterializeResult:
    """``one_hour(partition_key)`` for every hour of the run, in order; one result for them all."""
    keys = context.partition_keys
    if len(keys) == 1:
        return one_hour(keys[0])
    totals: dict[str, float] = {}
    for done, key in enumerate(keys, start=1):
        result = one_hour(key)
        for name, value in (result.metadata or {}).items():
            raw = getattr(value, "value", value)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                totals[name] = totals.get(name, 0) + raw
        if done % 24 == 0 or done == len(keys):
            context.log.info(f"{context.asset_key.to_user_string()}: {done} of {len(keys)} hours done (up to {key})")
    metadata: dict[str, object] = {"hours": len(keys), "first_hour": keys[0], "last_hour": keys[-1]}
    metadata.update({f"{name} (sum of hours)" if not name.startswith("dagster/") else name: value
                     for name, value in totals.items()})  # fmt: skip
    return dg.MaterializeResult(metadata=metadata)
