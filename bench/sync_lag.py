"""Sync lag: outbox -> RabbitMQ -> sync worker -> reference MES, at sustained rates and flat out.

Each part runs as its own process, as in production: the reference MES (uvicorn), the sync
worker (`invsync sync-worker`) and the outbox relay (`invsync outbox relay`). This process is
the ERP: it enqueues events into the outbox at a steady rate. Lag per event is the MES
confirmation time minus the time the ERP enqueued it (both on this machine's clock), read from
the worker's sync log.

    .venv/bin/python bench/sync_lag.py [--seconds 20] [--burst 100000] [--workers 1]

Prints one JSON line last: {"p50_ms", "p95_ms", "p99_ms", "rate_per_s": 200, "p99_ms_at_1000",
"max_per_s", "catchup_s_100k", "workers", "batch_max_events", "unbatched_max_per_s"}: the last is the
same worker with batches of one event (the worker before micro-batching), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import yaml

from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.messaging.topology import apply_topology, delete_topology
from invsync_pipeline.settings import config_file, load_settings

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(phase: str, i: int) -> dict:
    return {
        "schema_version": "1",
        "transaction_id": f"{phase}-{i:08d}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_system": "ERP",
        "material_number": f"RAW-{i % 500:04d}",
        "material_type": "raw",
        "quantity": "1",
        "unit": "KG",
        "location": f"WH01/RM{i % 4:02d}",
        "transaction_type": "receipt",
        "reason": "purchase_receipt",
        "erp_reference": f"49{i:010d}",
        "movement_type": "101",
    }


def produce(settings, phase: str, rate: int, seconds: float) -> int:
    """Enqueue `rate` events per second for `seconds`, in 10 ms ticks, like a busy ERP."""
    total = int(rate * seconds)
    tick = 0.01
    per_tick = rate * tick
    sent = 0
    started = time.perf_counter()
    with Outbox(settings) as box:
        while sent < total:
            due = min(total, int((time.perf_counter() - started) / tick * per_tick) + 1)
            if due > sent:
                box.enqueue([parse_event(event(phase, i)) for i in range(sent, due)])
                sent = due
            time.sleep(tick / 2)
    return total


def wait_applied(sync_db: Path, phase: str, n: int, timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    rows: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        if sync_db.exists():
            with sqlite3.connect(sync_db) as db:
                rows = db.execute(
                    "SELECT published_ms, confirmed_ms FROM sync_log WHERE transaction_id LIKE ? AND status='applied'",
                    (f"{phase}-%",),
                ).fetchall()
            if len(rows) >= n:
                return rows
        time.sleep(0.25)
    raise SystemExit(f"phase {phase}: only {len(rows)} of {n} applied within {timeout} s")


def burst(settings, sync_db: Path, phase: str, n: int) -> tuple[float, float]:
    """(events/s between the first and the last confirmation, s from enqueue to the last one)."""
    started_ms = time.time_ns() // 1_000_000
    with Outbox(settings) as box:
        for start in range(0, n, 20_000):
            box.enqueue([parse_event(event(phase, i)) for i in range(start, min(n, start + 20_000))])
    confirmed = sorted(c for _, c in wait_applied(sync_db, phase, n, 900))
    return n / max((confirmed[-1] - confirmed[0]) / 1000, 1e-3), (confirmed[-1] - started_ms) / 1000


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each sustained-rate phase")
    parser.add_argument("--burst", type=int, default=100_000, help="events enqueued at once: the catch-up backlog")
    parser.add_argument(
        "--baseline-burst", type=int, default=20_000, help="backlog for the unbatched worker (0: skip the baseline)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (sync-worker --processes)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="invsync-lag-"))
    port = free_port()
    env = dict(os.environ, INVSYNC_HOME=str(home), INVSYNC_NAMESPACE=f"lag.{uuid.uuid4().hex[:8]}.",
               INVSYNC_MES_URL=f"http://127.0.0.1:{port}", INVSYNC_MES_TOKEN=TOKEN)  # fmt: skip
    os.environ.update(env)
    settings = load_settings()
    apply_topology(settings)
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", (
            "from invsync_pipeline.reference.mes_service import serve; "
            f"serve('127.0.0.1', {port}, {str(home / 'mes.sqlite')!r}, {TOKEN!r})")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        cli = [sys.executable, "-m", "invsync_pipeline.cli"]
        worker_cmd = [*cli, "sync-worker", "--log-level", "WARNING", "--processes", str(args.workers)]
        worker = subprocess.Popen(worker_cmd, env=env)
        procs.append(worker)
        procs.append(subprocess.Popen([*cli, "outbox", "relay"], env=env, stdout=subprocess.DEVNULL))
        sync_db = home / "sync.sqlite"

        # Warm up connections and the MES, outside the measurement.
        produce(settings, "warm", 50, 1)
        wait_applied(sync_db, "warm", 50, 60)

        results = {}
        for rate in (200, 1000):
            n = produce(settings, f"r{rate}", rate, args.seconds)
            rows = wait_applied(sync_db, f"r{rate}", n, 120 + args.seconds)
            lags = [confirmed - published for published, confirmed in rows]
            results[rate] = {q: percentile(lags, q) for q in (0.5, 0.95, 0.99)}
            print(f"{rate}/s for {args.seconds:.0f} s: {n} events, lag p50 {results[rate][0.5]:.0f} ms, "
                  f"p95 {results[rate][0.95]:.0f} ms, p99 {results[rate][0.99]:.0f} ms", file=sys.stderr)  # fmt: skip

        # Max throughput: a backlog all at once (as after an outage); rate = events / (last confirm -
        # first confirm); catch-up = enqueue to last confirm.
        max_per_s, catchup_s = burst(settings, sync_db, "burst", args.burst)
        print(f"backlog of {args.burst}: applied at {max_per_s:.0f} events/s, caught up in {catchup_s:.1f} s",
              file=sys.stderr)  # fmt: skip
        unbatched = None
        if args.baseline_burst:
            worker.terminate()
            worker.wait(60)
            config = home / "unbatched.yaml"
            base = yaml.safe_load(config_file().read_text())
            config.write_text(yaml.safe_dump({**base, "sync": {**(base.get("sync") or {}), "batch_max_events": 1}}))
            procs.append(subprocess.Popen(worker_cmd, env={**env, "INVSYNC_CONFIG": str(config)}))
            unbatched, _ = burst(settings, sync_db, "unbatched", args.baseline_burst)
            print(f"the same worker unbatched: {unbatched:.0f} events/s", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        delete_topology(settings)
        shutil.rmtree(home, ignore_errors=True)
    at_200, at_1000 = results[200], results[1000]
    figures = {"p50_ms": at_200[0.5], "p95_ms": at_200[0.95], "p99_ms": at_200[0.99], "rate_per_s": 200,
               "p99_ms_at_1000": at_1000[0.99], "max_per_s": round(max_per_s),
               f"catchup_s_{args.burst // 1000}k": round(catchup_s, 1), "workers": args.workers,
               "batch_max_events": settings.sync.batch_max_events,
               "unbatched_max_per_s": round(unbatched) if unbatched else None}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
