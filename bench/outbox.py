"""Publish throughput: the outbox (durable enqueue, pipelined confirms) vs a confirm-per-publish loop.

Both publish the same events with the same properties (persistent, mandatory) to the same
exchange on the same broker in the same run. The baseline is the plain pika way: a
BlockingChannel with ``confirm_delivery()``, where every basic_publish waits for its confirm.
The outbox time includes the fsynced SQLite enqueue and the deletes after the confirms.

    .venv/bin/python bench/outbox.py [--events 50000]

Prints one JSON line last: {"events", "outbox_per_s", "blocking_confirm_per_s"}.
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

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.messaging.topology import apply_topology, delete_topology
from invsync_pipeline.settings import Settings, load_settings

# Yesterday: timestamps older than the contract's horizon (400 days) would be refused.
DAY = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()


def make_events(n: int) -> list[InventoryEvent]:
    # Warehouse WH99 has no plant queues, so only the ledger tap receives them.
    return [
        parse_event(
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
            }
        )
        for i in range(n)
    ]


def outbox_run(settings: Settings, events: list[InventoryEvent]) -> float:
    started = time.perf_counter()
    with Outbox(settings) as outbox:
        result = outbox.publish(events)
    elapsed = time.perf_counter() - started
    assert result.published == len(events) and result.pending == 0, result
    return elapsed


def blocking_confirm_run(settings: Settings, exchange: str, events: list[InventoryEvent]) -> float:
    conn = connect(settings)
    channel = conn.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for e in events:
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=e.transaction_id, timestamp=int(time.time()))  # fmt: skip
        channel.basic_publish(exchange, e.routing_key, e.to_body(), props, mandatory=True)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def purge(settings: Settings, queue: str) -> None:
    conn = connect(settings)
    conn.channel().queue_purge(queue)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="invsync-bench-")
    os.environ["INVSYNC_HOME"] = home
    os.environ["INVSYNC_NAMESPACE"] = f"bench.{uuid.uuid4().hex[:8]}."
    settings = load_settings()
    events = make_events(args.events)
    topo = apply_topology(settings)
    try:
        outbox_s = outbox_run(settings, events)
        purge(settings, topo.ledger_tap)  # both runs start from an empty queue
        blocking_s = blocking_confirm_run(settings, topo.exchange, events)
    finally:
        delete_topology(settings)
        shutil.rmtree(home, ignore_errors=True)
    n = len(events)
    print(f"outbox (enqueue + pipelined confirms, window {settings.outbox.confirm_window}): {n} in {outbox_s:.2f} s; "
          f"BlockingChannel confirm per publish: {n} in {blocking_s:.2f} s")  # fmt: skip
    print(json.dumps({"events": n, "outbox_per_s": round(n / outbox_s),
                      "blocking_confirm_per_s": round(n / blocking_s)}))  # fmt: skip


if __name__ == "__main__":
    main()
