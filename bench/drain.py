"""Drain throughput: the real drain path (staged durably, then acked) vs a bare pika loop.

Both consume the same number of messages from the same kind of queue on the same broker in
the same run. The bare loop does no work: basic_consume with the same prefetch, ack each
message. The drain validates every message, writes fsynced segments, then acks per batch, then
writes each segment's Parquet twin.

    .venv/bin/python bench/drain.py [--events 100000]

Prints one JSON line last: {"events", "drain_per_s", "raw_per_s", "ratio", "segments", "parquet_twins"}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import pika

from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.topology import apply_topology, delete_topology
from invsync_pipeline.settings import load_settings

# Yesterday: timestamps older than the contract's horizon (400 days) would be refused.
DAY = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()


def body(i: int) -> bytes:
    return json.dumps(
        {
            "schema_version": "1",
            "transaction_id": f"BENCH-{i:09d}",
            "timestamp": f"{DAY}T{8 + i % 4:02d}:{i % 60:02d}:00Z",
            "source_system": "ERP",
            "material_number": f"MAT-{i % 5000:05d}",
            "material_type": "raw",
            "quantity": str(1 + i % 97),
            "unit": "KG",
            "location": f"WH99/RM{i % 20:02d}",
            "transaction_type": "receipt",
            "reason": "purchase_receipt",
            "erp_reference": f"49{i:010d}",
            "movement_type": "101",
        },
        separators=(",", ":"),
    ).encode()


def fill(settings, exchange: str, queue: str, n: int) -> None:
    """Put n messages in the tap (warehouse WH99 has no plant queues, so only the tap gets them)."""
    conn = connect(settings)
    ch = conn.channel()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for i in range(n):
        ch.basic_publish(exchange, "inventory.wh99.raw.receipt", body(i), props)
        if i % 10_000 == 0:
            conn.process_data_events(0)
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        time.sleep(0.2)
    conn.close()


def raw_loop(settings, queue: str, n: int, prefetch: int) -> float:
    conn = connect(settings)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    seen = 0

    def on_message(channel, method, _props, _body):
        nonlocal seen
        channel.basic_ack(method.delivery_tag)
        seen += 1
        if seen >= n:
            channel.stop_consuming()

    ch.basic_consume(queue, on_message_callback=on_message)
    started = time.perf_counter()
    ch.start_consuming()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def drain_path(settings, n: int) -> tuple[float, int]:
    started = time.perf_counter()
    staged = 0
    while staged < n:
        staged += drain_ledger_tap(settings, max_seconds=50, max_events=n - staged).staged
    return time.perf_counter() - started, staged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="invsync-bench-")
    os.environ["INVSYNC_HOME"] = home
    os.environ["INVSYNC_NAMESPACE"] = f"bench.{uuid.uuid4().hex[:8]}."
    settings = load_settings()
    topo = apply_topology(settings)
    try:
        n = args.events
        fill(settings, topo.exchange, topo.ledger_tap, n)
        raw_s = raw_loop(settings, topo.ledger_tap, n, settings.staging.batch_max_events)
        fill(settings, topo.exchange, topo.ledger_tap, n)
        drain_s, staged = drain_path(settings, n)
        assert staged == n, f"staged {staged} of {n}"
        events = settings.staged_dir / "events"
        segments, twins = len(list(events.glob("*/*.jsonl"))), len(list(events.glob("*/*.parquet")))
    finally:
        delete_topology(settings)
        shutil.rmtree(home, ignore_errors=True)
    raw_rate, drain_rate = n / raw_s, n / drain_s
    print(f"bare pika consume+ack: {n} in {raw_s:.2f} s; drain (validate, fsync, ack): {n} in {drain_s:.2f} s")
    print(json.dumps({"events": n, "drain_per_s": round(drain_rate), "raw_per_s": round(raw_rate),
                      "ratio": round(drain_rate / raw_rate, 3), "segments": segments,
                      "parquet_twins": twins}))  # fmt: skip


if __name__ == "__main__":
    main()
