"""Publish throughput: the outbox (durable enqueue, pipelined confirms) vs bare pika publishers.

All publish the same events with the same properties (persistent, mandatory) to the same
exchange on the same broker in the same run. The baseline that counts is a bare pika publisher
that pipelines its confirms the same way (a SelectConnection, the same confirm window, no store
behind it): `ratio` = outbox / that. The plain pika way, a BlockingChannel with
``confirm_delivery()`` where every basic_publish waits for its confirm, is shown as well. The
outbox time includes the fsynced SQLite enqueue and the deletes after the confirms.

    .venv/bin/python bench/outbox.py [--events 100000]

Prints one JSON line last: {"events", "outbox_per_s", "raw_confirm_per_s", "ratio",
"blocking_confirm_per_s", "confirm_window"}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta

import pika

from invsync_pipeline.contract import PUBLISHED_MS_HEADER, InventoryEvent, parse_event
from invsync_pipeline.messaging.connection import connect, connection_parameters
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


def raw_confirm_run(settings: Settings, exchange: str, events: list[InventoryEvent]) -> float:
    """Bare pika: publish with up to confirm_window unconfirmed, count the acks, nothing stored."""
    window = settings.outbox.confirm_window
    state = {"next": 0, "unconfirmed": 0, "acked": 0, "started": 0.0, "elapsed": 0.0}

    def pump(channel) -> None:
        while state["next"] < len(events) and state["unconfirmed"] < window:
            event = events[state["next"]]  # serialized here, as the outbox does at enqueue
            key, body, tx = event.routing_key, event.to_body(), event.transaction_id
            now = time.time()
            headers = {PUBLISHED_MS_HEADER: int(now * 1000)}
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=tx,
                                         timestamp=int(now), headers=headers)  # fmt: skip
            channel.basic_publish(exchange, key, body, props, mandatory=True)
            state["next"] += 1
            outstanding.append(state["next"])
            unconfirmed.add(state["next"])
            state["unconfirmed"] = len(unconfirmed)

    outstanding: deque[int] = deque()  # tags in publish order
    unconfirmed: set[int] = set()

    def on_confirm(frame, channel) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if multiple:
            while outstanding and outstanding[0] <= tag:
                unconfirmed.discard(outstanding.popleft())
        else:
            unconfirmed.discard(tag)
            while outstanding and outstanding[0] not in unconfirmed:
                outstanding.popleft()
        state["unconfirmed"] = len(unconfirmed)
        state["acked"] = state["next"] - len(unconfirmed)
        if state["acked"] >= len(events):
            state["elapsed"] = time.perf_counter() - state["started"]
            channel.connection.close()
            return
        pump(channel)

    def on_channel(channel) -> None:
        state["started"] = time.perf_counter()
        channel.confirm_delivery(ack_nack_callback=lambda f: on_confirm(f, channel), callback=lambda _f: pump(channel))

    conn = pika.SelectConnection(connection_parameters(settings)[0],
                                 on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_close_callback=lambda c, r: c.ioloop.stop())  # fmt: skip
    conn.ioloop.start()
    assert state["acked"] == len(events), state
    return state["elapsed"]


def purge(settings: Settings, queue: str) -> None:
    conn = connect(settings)
    conn.channel().queue_purge(queue)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--blocking-events", type=int, default=10_000,
                        help="events for the confirm-per-publish loop (slow; a share of --events)")  # fmt: skip
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="invsync-bench-")
    os.environ["INVSYNC_HOME"] = home
    os.environ["INVSYNC_NAMESPACE"] = f"bench.{uuid.uuid4().hex[:8]}."
    settings = load_settings()
    events = make_events(args.events)
    topo = apply_topology(settings)
    try:
        outbox_s = outbox_run(settings, events)
        purge(settings, topo.ledger_tap)  # every run starts from an empty queue
        raw_s = raw_confirm_run(settings, topo.exchange, events)
        purge(settings, topo.ledger_tap)
        few = events[: args.blocking_events]
        blocking_s = blocking_confirm_run(settings, topo.exchange, few)
    finally:
        delete_topology(settings)
        shutil.rmtree(home, ignore_errors=True)
    n = len(events)
    window = settings.outbox.confirm_window
    print(f"outbox (enqueue + pipelined confirms, window {window}): {n} in {outbox_s:.2f} s; bare pika, the same "
          f"window: {raw_s:.2f} s; BlockingChannel confirm per publish: {len(few)} in {blocking_s:.2f} s")  # fmt: skip
    print(json.dumps({"events": n, "outbox_per_s": round(n / outbox_s), "raw_confirm_per_s": round(n / raw_s),
                      "ratio": round(raw_s / outbox_s, 2), "blocking_confirm_per_s": round(len(few) / blocking_s),
                      "confirm_window": window}))  # fmt: skip


if __name__ == "__main__":
    main()
