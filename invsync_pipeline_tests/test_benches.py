"""Every benchmark still runs, at a tiny size, and prints the JSON line its docstring promises.

Figures are never asserted here (they belong to the benchmarks, run on purpose); this only keeps
the scripts from rotting as the code they measure changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

CASES = {
    "fuzz_contract": (["--bodies", "300"], {"bodies", "accepted", "refused", "crashes"}),
    "outbox": (["--events", "500", "--blocking-events", "100"], {"outbox_per_s", "raw_confirm_per_s", "ratio"}),
    "drain": (["--events", "500"], {"events", "drain_per_s", "raw_per_s", "ratio"}),
    "plants": (["--plants", "2", "--material-locations", "200", "--repeat", "1"],
               {"plants", "parallel_s", "one_plant_s", "ratio", "serial_s"}),
    "reconcile": (["--sizes", "1000", "--repeat", "1"], {"material_locations", "seconds", "pandas_seconds"}),
    "sync_lag": (["--seconds", "1", "--burst", "1000", "--baseline-burst", "100"],
                 {"p50_ms", "p99_ms", "p99_ms_at_1000", "max_per_s", "catchup_s_1k", "workers"}),
    "backfill": (["--hours", "2", "--material-locations", "500", "--events-per-hour", "500", "--baseline-hours", "1"],
                 {"partitions", "seconds", "per_partition_s", "baseline_per_partition_run_s"}),
}  # fmt: skip


@pytest.mark.broker
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_prints_its_json_line(name, tmp_path):
    args, keys = CASES[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVSYNC_", "DAGSTER_"))}
    env["INVSYNC_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert keys <= set(last), f"{name} printed {sorted(last)}"
