"""The shadow period's backfill: 3 weeks of hourly reconciliation (504 partitions) in one run.

A plant of 50,000 material-locations and 100,000 events an hour, already reconciled live once:
the staged event log is on disk and the warehouse holds what the live runs stored (snapshots,
investigation inputs). The backfill runs the whole `hourly_reconciliation` job over the range
in one run (the hourly assets' single-run backfill policy), as the UI's backfill does. The
baseline, measured in the same process: a few hours run the old way, one run per partition,
extrapolated to the range.

    .venv/bin/python bench/backfill.py [--hours 504] [--material-locations 50000]
        [--events-per-hour 100000] [--home DIR] [--reuse] [--baseline-hours 3] [--range-hours N]

--reuse --home DIR backfills the data a run with --home DIR generated (31 min at the full size)
again; --range-hours N backfills only its first N hours (a quick profile); --baseline-hours 0
skips the one-run-per-partition baseline. Before the backfill, every staged segment gets the
Parquet twin the drain writes beside it (messaging/staged_log.py; ~25 min for the 3 weeks, once,
figures "twins_written" and "twins_seconds"); --no-twins leaves segments without one, so staging
reads their JSON Lines (the fallback path).

INVSYNC_DUCKDB_MEMORY_LIMIT (e.g. 4GB) caps DuckDB's memory as in production settings.

Prints one JSON line last: {"partitions", "seconds", "per_partition_s", "step_seconds", ...};
step_seconds is each asset's share of the ranged run, from the run's step events.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

START = datetime(2025, 3, 3, tzinfo=UTC)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d-%H:%M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, default=504)
    parser.add_argument("--material-locations", type=int, default=50_000)
    parser.add_argument("--events-per-hour", type=int, default=100_000)
    parser.add_argument("--baseline-hours", type=int, default=3, help="hours run one run per partition")
    parser.add_argument("--range-hours", type=int, default=None, help="backfill only the first N hours")
    parser.add_argument("--home", type=Path, default=None, help="runtime dir (default: a temp dir, removed after)")
    parser.add_argument("--reuse", action="store_true", help="use the data already generated in --home")
    parser.add_argument("--no-twins", action="store_true", help="do not write the segments' missing Parquet twins")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="invsync-bench-backfill-"))
    os.environ["INVSYNC_HOME"] = str(home)
    os.environ["INVSYNC_NAMESPACE"] = f"bench.{uuid.uuid4().hex[:8]}."
    os.environ.pop("DAGSTER_HOME", None)

    import dagster as dg
    from _backfill_data import generate

    from invsync_pipeline.definitions import defs
    from invsync_pipeline.messaging.topology import apply_topology, delete_topology
    from invsync_pipeline.settings import load_settings

    figures: dict[str, object] = {}
    if not args.reuse:
        started = time.perf_counter()
        made = generate(home, hours=args.hours, material_locations=args.material_locations,
                        events_per_hour=args.events_per_hour, start=START)  # fmt: skip
        figures["generate_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({"generated": made}, default=str), flush=True)
    settings = load_settings()
    if not args.no_twins:
        # The generator writes segments as the drain does, less the twin the drain writes after
        # the ack; write the missing ones (none on a --reuse of data that has them).
        from invsync_pipeline.messaging.staged_log import columnar_twins

        started = time.perf_counter()
        events_dir = settings.staged_dir / "events"
        figures["twins_written"] = sum(len(columnar_twins(sorted(folder.glob("*.jsonl"))))
                                       for folder in sorted(events_dir.iterdir()) if folder.is_dir())  # fmt: skip
        figures["twins_seconds"] = round(time.perf_counter() - started, 1)
    apply_topology(settings)
    job = defs.resolve_job_def("hourly_reconciliation")
    keys = [_key(START + timedelta(hours=h)) for h in range(min(args.hours, args.range_hours or args.hours))]
    per_run = None
    try:
        # Baseline: the last few hours, one run each (what a backfill without the policy does).
        baseline = keys[-args.baseline_hours :] if args.baseline_hours > 0 else []
        started = time.perf_counter()
        for key in baseline:
            assert job.execute_in_process(partition_key=key, instance=dg.DagsterInstance.ephemeral(),
                                          run_config=QUIET).success  # fmt: skip
        if baseline:
            per_run = (time.perf_counter() - started) / len(baseline)
            print(json.dumps({"baseline_hours": len(baseline), "per_partition_run_s": round(per_run, 3)}), flush=True)

        started = time.perf_counter()
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags, run_config=QUIET)
        seconds = time.perf_counter() - started
        assert result.success
        steps = {e.step_key: round(e.event_specific_data.duration_ms / 1000, 1)
                 for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}  # fmt: skip
        print(json.dumps({"step_seconds": steps}), flush=True)
    finally:
        delete_topology(settings)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({
        "material_locations": args.material_locations, "events_per_hour": args.events_per_hour, **figures,
        "peak_rss_mb": peak_mb, "duckdb_memory_limit": settings.duckdb.memory_limit or "default",
        "baseline_per_partition_run_s": round(per_run, 3) if per_run is not None else None,
        "baseline_extrapolated_s": round(per_run * len(keys), 1) if per_run is not None else None,
        "partitions": len(keys), "seconds": round(seconds, 1), "per_partition_s": round(seconds / len(keys), 3),
        "step_seconds": steps,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
