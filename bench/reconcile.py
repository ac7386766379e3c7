"""Reconciliation throughput: the recon SQL (variances, explained_movements, variance_investigation)
in DuckDB vs the same in pandas.

For each size: N material-locations with 10 staged events each (receipts, issues, transfers to
another location, adjustments incl. RECON corrections, a few cycle counts), both systems' begin
and end balances consistent with the events, then a few differences carried over from an
earlier hour (some of them movements an earlier hour found in flight, looked at again), ~0.5% of
end balances perturbed and a few events missing in one system, booked under another unit, held in
the pipeline (the ERP outbox among it: staged only after the hour's first reconciliation), applied
late or still within the in-flight window, so every cause of the investigation occurs. Inputs,
with what the hour's first reconciliation and investigation kept, are generated with DuckDB SQL
into a fresh DuckDB file (not timed; _reconcile_data.py). Then, each in its own process so
neither pollutes the other's memory:

- DuckDB: what the assets do for the hour (DELETE + INSERT INTO recon.variances, then
  recon.explained_movements and recon.variance_investigation, with the assets' summary queries),
  threads = 2, timed (_reconcile_duckdb.py);
- pandas: the same inputs read into DataFrames (not timed), the same outputs computed with
  merges and groupbys, by the same steps as the SQL (timed; _reconcile_pandas.py). Both outputs
  are compared row by row (_reconcile_compare.py); the run fails if they differ.

This file runs the parts and prints the results.

Each engine runs --repeat times per size (the machine is shared; the fastest run counts). Peak
RSS is that of the engine's own process. A pandas run that takes over PANDAS_LIMIT_S is stopped
and reported in the JSON as "pandas_seconds": null with a note.

    .venv/bin/python bench/reconcile.py [--sizes 10000,100000,1000000] [--repeat 3] [--keep]

Prints a per-size table to stderr and one JSON line last, for the largest size:
{"material_locations", "transactions", "seconds", "pandas_seconds", "speedup", "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _reconcile_compare import assert_same
from _reconcile_data import EVENTS_PER_KEY, LOCATIONS_PER_MATERIAL, generate
from _reconcile_duckdb import run_duckdb
from _reconcile_pandas import run_pandas

PANDAS_LIMIT_S = 600  # a pandas run is stopped after this and reported as not finished


def child(part: str, db: Path, out: Path, *extra: str, mem_limit_gb: float = 0) -> subprocess.Popen:
    def limit() -> None:
        if mem_limit_gb:  # a MemoryError in the child instead of the kernel's OOM killer on a shared machine
            cap = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--part", part, "--db", str(db), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=limit)


def run_child(part: str, db: Path, out: Path, *extra: str) -> dict:
    proc = child(part, db, out, *extra)
    proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {part} step failed with exit code {proc.returncode} (its error is above)")
    return json.loads(out.read_text())


def run_pandas_child(db: Path, out: Path, repeat: int, mem_limit_gb: float) -> tuple[dict | None, str | None]:
    """pandas in its own process; each of its runs may take PANDAS_LIMIT_S, loading is not limited."""
    proc = child("pandas", db, out, "--repeat", str(repeat), mem_limit_gb=mem_limit_gb)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    if lines.get() is None:
        proc.wait()
        return None, f"pandas failed while loading the inputs (exit code {proc.returncode})"
    for _ in range(repeat):
        try:
            line = lines.get(timeout=PANDAS_LIMIT_S)
        except queue.Empty:
            proc.kill()
            proc.wait()
            return None, f"pandas did not finish within {PANDAS_LIMIT_S} s and was stopped"
        if line is None:
            proc.wait()
            cap = f"a MemoryError means it hit the {mem_limit_gb:g} GiB cap (--pandas-mem-gb)"
            return None, f"pandas failed with exit code {proc.returncode}; {cap}"
    proc.wait()
    if proc.returncode != 0:
        return None, f"pandas failed after its runs with exit code {proc.returncode}"
    return json.loads(out.read_text()), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="material-locations per run, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the DuckDB files (their folder is printed)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine and size; the fastest counts")
    parser.add_argument("--pandas-mem-gb", type=float, default=21.0, help="address-space cap of the pandas process")
    parser.add_argument("--part", choices=["generate", "duckdb", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--material-locations", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:
        work = {"generate": lambda: generate(args.db, args.material_locations),
                "duckdb": lambda: run_duckdb(args.db, args.repeat),
                "pandas": lambda: run_pandas(args.db, args.repeat)}[args.part]  # fmt: skip
        started = time.perf_counter()
        result = work()
        if args.part == "generate":
            result = {"tables": result, "seconds": time.perf_counter() - started}
        args.out.write_text(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        if n <= 0 or n % LOCATIONS_PER_MATERIAL:
            parser.error(
                f"--sizes: {n} is not a positive multiple of {LOCATIONS_PER_MATERIAL} (locations per material)"
            )
    home = Path(tempfile.mkdtemp(prefix="invsync-bench-reconcile-"))
    rows = []
    try:
        for n in sizes:
            db = home / f"recon_{n}.duckdb"
            gen = run_child("generate", db, home / f"gen_{n}.json", "--material-locations", str(n))
            duck = run_child("duckdb", db, home / f"duckdb_{n}.json", "--repeat", str(args.repeat))
            pan, note = run_pandas_child(db, home / f"pandas_{n}.json", args.repeat, args.pandas_mem_gb)
            if pan is not None:
                assert_same(duck, pan)
            row = {
                "material_locations": n,
                "transactions": n * EVENTS_PER_KEY,
                "generate_seconds": gen["seconds"],
                "seconds": duck["seconds"],
                "pandas_seconds": pan["seconds"] if pan else None,
                "speedup": pan["seconds"] / duck["seconds"] if pan else None,
                "peak_rss_mb": duck["peak_rss_mb"],
                "pandas_peak_rss_mb": pan["peak_rss_mb"] if pan else None,
                "variances": duck["variances"],
                "runs": (duck["runs"], pan["runs"] if pan else []),
                "causes": duck["causes"],
                "note": note,
            }
            rows.append(row)
            print_row(row, first=len(rows) == 1)
            if not args.keep:
                db.unlink()
    finally:
        if args.keep:
            print(f"kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    largest = rows[-1]
    both = [r for r in rows if r["pandas_seconds"] is not None]
    for r in rows:
        runs = "; ".join(" ".join(f"{t:.2f}" for t in ts) or "-" for ts in r["runs"])
        print(f"{r['material_locations']:>9,}: runs (duckdb; pandas) {runs} s; {r['variances']:,} variances; "
              f"investigation rows by cause {r['causes']}", file=sys.stderr)  # fmt: skip
    result = {
        "material_locations": largest["material_locations"],
        "transactions": largest["transactions"],
        "seconds": round(largest["seconds"], 2),
        "pandas_seconds": round(largest["pandas_seconds"], 2) if largest["pandas_seconds"] is not None else None,
        "speedup": round(largest["speedup"], 1) if largest["speedup"] is not None else None,
        "peak_rss_mb": round(largest["peak_rss_mb"]),
    }
    if largest["note"]:
        result["note"] = largest["note"]
        if both:
            b = both[-1]
            result["largest_size_both_ran"] = {"material_locations": b["material_locations"],
                                               "seconds": round(b["seconds"], 2),
                                               "pandas_seconds": round(b["pandas_seconds"], 2),
                                               "speedup": round(b["speedup"], 1)}  # fmt: skip
    print(json.dumps(result))


def print_row(row: dict, first: bool) -> None:
    """One line of the per-size table; seconds per million events show whether growth is linear."""

    def fmt(value, spec: str) -> str:
        return "-".rjust(len(format(0.0, spec))) if value is None else format(value, spec)

    per_million = 1e6 / row["transactions"]
    pandas_s = row["pandas_seconds"]
    cells = [
        f"{row['material_locations']:>9,}",
        f"{row['transactions']:>10,}",
        f"{row['generate_seconds']:>7.1f}",
        f"{row['seconds']:>9.2f}",
        fmt(pandas_s, ">9.2f"),
        fmt(row["speedup"], ">7.1f") + ("x" if row["speedup"] is not None else " "),
        f"{row['peak_rss_mb']:>10,.0f}",
        fmt(row["pandas_peak_rss_mb"], ">10,.0f"),
        f"{row['seconds'] * per_million:>9.2f}",
        fmt(pandas_s * per_million if pandas_s is not None else None, ">9.2f"),
    ]
    if first:
        head = ["mat-locs", "events", "gen s", "duckdb s", "pandas s", "speedup", "duckdb MB", "pandas MB",
                "duckdb/1M", "pandas/1M"]  # fmt: skip
        print(" ".join(f"{h:>{len(c)}}" for h, c in zip(head, cells, strict=True)), file=sys.stderr)
    note = f"  ({row['note']})" if row["note"] else ""
    print(" ".join(cells) + note, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
