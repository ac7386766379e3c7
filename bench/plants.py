"""Plants in parallel: one hour of 4 plants reconciled at once, each in its own DuckDB file, against
one plant alone and against the 4 one after another (one writer for every plant, as before).

Each plant is what its Dagster code location runs with INVSYNC_PLANT set (docs/deploy.md): its
settings put its DuckDB file under <home>/plants/<plant>/, and its runs join its own writer pool,
so no plant waits for another. The timed work is the plant's own inventory_variances and
variance_investigation assets materialized for the hour (the keys <plant>/..., the pool
duckdb_writer.<plant>), from the first run's start to the last one's end, on
bench/reconcile.py's synthetic hour of N material-locations with 10 events each (generated once,
not timed, and copied to every plant). Every run is a process of its own, as a plant's run is.

    .venv/bin/python bench/plants.py [--plants 4] [--material-locations 50000] [--repeat 2]

Prints one JSON line last:
{"plants", "material_locations_per_plant", "parallel_s", "one_plant_s", "ratio", "serial_s", "cores",
 "duckdb_threads"}.
ratio = parallel_s / one_plant_s: 1.0 if plants cost nothing to each other, `plants` if they
still ran one after another; on a machine with fewer cores than plants it stays above 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _reconcile_data import HOUR, LOCATIONS_PER_MATERIAL, generate

from invsync_pipeline.settings import load_settings
from invsync_pipeline.warehouse import open_warehouse

QUEUES = [{"name": "all", "material_types": ["*"]}]


def plant_env(home: Path, config: Path, plant: str, threads: int) -> dict[str, str]:
    env = {**os.environ, "INVSYNC_HOME": str(home), "INVSYNC_CONFIG": str(config), "INVSYNC_PLANT": plant}
    if threads:
        env["INVSYNC_DUCKDB_THREADS"] = str(threads)  # duckdb.threads of the plant's runs
    return env


def reconcile_child() -> dict:
    """In a plant's process: its inventory_variances and variance_investigation assets (keys
    <plant>/..., pool duckdb_writer.<plant>) materialized for the hour, in its own DuckDB file."""
    import dagster as dg

    from invsync_pipeline.assets.variances import inventory_variances, variance_investigation
    from invsync_pipeline.definitions import default_resources
    from invsync_pipeline.partitions import partition_key_of

    settings = load_settings()
    assets = [inventory_variances, variance_investigation]
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    instance = dg.DagsterInstance.ephemeral()
    # Ready, then wait for the go: the plants' runs start together, after every process has
    # imported Dagster (imports competing for the cores are not the runs' work).
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    result = dg.materialize(assets, partition_key=partition_key_of(HOUR), resources=default_resources(),
                            instance=instance, run_config=quiet)  # fmt: skip
    finished = time.time()
    assert result.success
    keys = sorted(k.to_user_string() for a in assets for k in a.keys)
    return {"plant": settings.plant, "path": str(settings.warehouse_path), "keys": keys,
            "pool": inventory_variances.op.pool, "started": started, "finished": finished}  # fmt: skip


def run_plants(home: Path, config: Path, plants: list[str], threads: int) -> tuple[float, list[dict]]:
    """The plants' runs started together once every process is ready; (seconds from the first
    run's start to the last one's end; their results)."""
    command = [sys.executable, __file__, "--part", "reconcile"]
    procs = [subprocess.Popen(command, env=plant_env(home, config, p, threads), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for p in plants]  # fmt: skip
    for plant, proc in zip(plants, procs, strict=True):
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"plant {plant}: its process did not get ready (its error is above)")
    for proc in procs:  # go, all at once
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for plant, proc in zip(plants, procs, strict=True):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"plant {plant}: the reconciliation failed with exit code {proc.returncode} (above)")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return max(r["finished"] for r in results) - min(r["started"] for r in results), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plants", type=int, default=4)
    parser.add_argument("--material-locations", type=int, default=50_000, help="per plant")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each; the fastest counts")
    parser.add_argument(
        "--threads", type=int, default=0, help="DuckDB threads per plant's run (0: DuckDB's default, every core)"
    )
    parser.add_argument("--part", choices=["reconcile"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(reconcile_child()))
        return
    if args.material_locations <= 0 or args.material_locations % LOCATIONS_PER_MATERIAL:
        parser.error(f"--material-locations: {args.material_locations} is not a positive multiple of "
                     f"{LOCATIONS_PER_MATERIAL}")  # fmt: skip
    plants = [f"WH{n:02d}" for n in range(1, args.plants + 1)]
    home = Path(tempfile.mkdtemp(prefix="invsync-bench-plants-"))
    try:
        config = home / "invsync.yaml"
        topology = {"tap_per_plant": True, "plants": [{"warehouse": p, "queues": QUEUES} for p in plants]}
        config.write_text(yaml.safe_dump({"topology": topology}))
        started = time.perf_counter()
        source = home / "generated.duckdb"
        tables = generate(source, args.material_locations)
        print(f"generated one plant's hour in {time.perf_counter() - started:.1f} s: {tables}", file=sys.stderr)
        paths = {p: load_settings(config, home=home, plant=p).warehouse_path for p in plants}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        rounds = []
        for n in range(args.repeat):
            for path in paths.values():  # every round starts from the same files
                shutil.copyfile(source, path)
            one, _ = run_plants(home, config, plants[:1], args.threads)
            serial = sum(run_plants(home, config, [p], args.threads)[0] for p in plants)
            parallel, results = run_plants(home, config, plants, args.threads)
            assert len({r["path"] for r in results}) == len(plants), "plants must not share a DuckDB file"
            assert len({r["pool"] for r in results}) == len(plants), "plants must not share a writer pool"
            rounds.append({"one_plant_s": one, "serial_s": serial, "parallel_s": parallel})
            print(f"round {n + 1}: one plant {one:.2f} s, {len(plants)} one after another {serial:.2f} s, "
                  f"{len(plants)} in parallel {parallel:.2f} s", file=sys.stderr)  # fmt: skip
        with open_warehouse(paths[plants[0]], read_only=True) as conn:
            rows = conn.execute("SELECT count(*) FROM recon.variances").fetchone()[0]
        assert rows >= args.material_locations, f"the reconciliation wrote {rows} variance rows"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    best = {key: min(r[key] for r in rounds) for key in ("one_plant_s", "serial_s", "parallel_s")}
    print(json.dumps({"plants": len(plants), "material_locations_per_plant": args.material_locations,
                      "parallel_s": round(best["parallel_s"], 3), "one_plant_s": round(best["one_plant_s"], 3),
                      "ratio": round(best["parallel_s"] / best["one_plant_s"], 3),
                      "serial_s": round(best["serial_s"], 3), "cores": os.cpu_count(),
                      "duckdb_threads": args.threads or "default"}))  # fmt: skip


if __name__ == "__main__":
    main()
