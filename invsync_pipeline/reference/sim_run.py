"""Running a planned simulation against the real systems: the ERP tables and outbox, the MES, the broker, the worker.

Actions run in plan order, as fast as the systems allow; the timestamps are the simulated ones.
ERP postings go into the ERP tables, and their events into the ERP outbox (flushed in batches,
in order). Backflushes go to the MES, which books and publishes them itself, and then into the
ERP tables as SAP's backflush interface would post them. Fault deliveries that the outbox
cannot make (straight to the ledger tap, a body that breaks the contract) are published on
their own channel after the outbox is flushed, so the plan's publish order holds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pika

from invsync_pipeline.contract import PUBLISHED_MS_HEADER, InventoryEvent
from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.reference.ground_truth import record_finished, record_plan
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.sim_model import Simulation
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.sync.worker import SyncWorker

log = logging.getLogger("invsync.simulate")

# Events enqueued into the outbox per SQLite transaction (one fsync each).
_ENQUEUE_BATCH = 500


class SimulationError(RuntimeError):
    """A simulated run could not go on; the message says what happened and what to check."""


def topic_matches(pattern: str, routing_key: str) -> bool:
    """RabbitMQ topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), routing_key.split("."))


@dataclass
class RunResult:
    run_id: str
    events: int
    erp_postings: int = 0
    backflushes: int = 0
    published: int = 0  # messages that reached the exchange or the tap, duplicates counted
    to_work_queues: int = 0  # of those, copies routed to the plant queues the worker consumes
    unpublished_backflushes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    truth_path: Path | None = None


class BackgroundWorker:
    """A SyncWorker on a thread, with no low-activity windows, that can wait until it caught up."""

    def __init__(self, settings: Settings, mes_client: ReferenceMesClient):
        quiet = settings.model_copy(update={"sync": settings.sync.model_copy(update={"noncritical_windows": ()})})
        self.settings = quiet
        self.worker = SyncWorker(quiet, mes_client)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sim-sync-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting thread
            self.error = exc

    @property
    def handled(self) -> int:
        """Messages the worker finished with: applied, duplicate, skipped or parked."""
        s = self.worker.stats
        return s.applied + s.duplicates + s.skipped + s.restored + s.parked

    def start(self) -> BackgroundWorker:
        self._thread.start()
        return self

    def wait_for(self, handled: int, timeout: float) -> None:
        """Return once the worker handled ``handled`` messages and every plant queue is empty."""
        deadline = time.monotonic() + timeout
        queues = build_topology(self.settings).work_queues
        conn = connect(self.settings)
        try:
            channel = conn.channel()
            while True:
                if self.error is not None or not self._thread.is_alive():
                    raise SimulationError(f"the sync worker stopped: {self.error!r}")
                if self.handled >= handled and not any(
                    channel.queue_declare(q, passive=True).method.message_count for q in queues
                ):
                    return
                if time.monotonic() > deadline:
                    raise SimulationError(
                        f"the sync worker handled {self.handled} of {handled} messages in {timeout:.0f} s; "
                        "check the MES (invsync mes faults) and the retry and parking queues"
                    )
                conn.sleep(0.05)
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Publisher:
    """The ERP outbox plus a raw channel for the deliveries the outbox cannot make; counts what it sent."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topology = build_topology(settings)
        self.outbox = Outbox(settings)
        topo = self.topology
        self.routes = [(b.routing_key, b.destination) for b in topo.bindings
                       if b.source == topo.exchange and b.destination in topo.work_queues]  # fmt: skip
        self.pending: list[InventoryEvent] = []
        self.in_outbox: set[str] = set()
        self.published = 0
        self.to_work_queues = 0

    def count(self, routing_key: str | None) -> None:
        self.published += 1
        if routing_key is not None:
            self.to_work_queues += len({queue for pattern, queue in self.routes if topic_matches(pattern, routing_key)})

    def publish(self, event: InventoryEvent) -> None:
        if event.transaction_id in self.in_outbox:
            # The outbox ignores an id it still holds: send the first copy before the second.
            self.flush()
        self.pending.append(event)
        self.in_outbox.add(event.transaction_id)
        self.count(event.routing_key)
        if len(self.pending) >= _ENQUEUE_BATCH:
            self._enqueue()

    def _enqueue(self) -> None:
        if self.pending:
            self.outbox.enqueue(self.pending)
            self.pending = []

    def flush(self, timeout: float = 120.0) -> None:
        self._enqueue()
        result = self.outbox.flush_until_empty(timeout)
        if result.pending:
            raise SimulationError(f"the ERP outbox {self.outbox.path} did not empty: {result.summary()}")
        self.in_outbox.clear()

    def raw(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> None:
        """Publish a body as it is, with confirms, after everything planned before it."""
        self.flush()
        now = time.time()
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=message_id,
                                     timestamp=int(now), headers={PUBLISHED_MS_HEADER: int(now * 1000)})  # fmt: skip
        conn = connect(self.settings)
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        finally:
            conn.close()
        self.count(routing_key if exchange else None)

    def close(self) -> None:
        self.outbox.close()


def run(
    sim: Simulation,
    settings: Settings,
    mes_client: ReferenceMesClient,
    *,
    erp: ErpDatabase | None = None,
    worker: BackgroundWorker | None = None,
    drain_timeout: float = 300.0,
) -> RunResult:
    """Carry out the plan. With a ``worker``, checkpoints wait until it applied everything sent so
    far (cycle counts need that), and the run returns only once the worker caught up."""
    started = time.monotonic()
    own_erp = erp is None
    erp = erp or ErpDatabase.from_settings(settings)
    result = RunResult(sim.run_id, len(sim.events))
    publisher = _Publisher(settings)
    try:
        erp.create_schema()
        for m in sim.plant.materials:
            erp.upsert_material(m.number, m.material_type, m.unit, unit_cost=m.unit_cost, currency="EUR",
                                abc_class=m.abc_class)  # fmt: skip
        result.truth_path = record_plan(settings, sim)
        publisher.flush()  # whatever an earlier run left goes first, and is not counted as ours
        baseline = worker.handled if worker is not None else 0

        def checkpoint(note: str) -> None:
            publisher.flush()
            if worker is not None:
                worker.wait_for(baseline + publisher.to_work_queues, drain_timeout)
            log.info("checkpoint (%s): %d published", note, publisher.published)

        for action in sim.actions:
            planned = sim.events[action.event] if action.event is not None else None
            if action.kind == "checkpoint" or planned is None:
                checkpoint(action.note)
            elif action.kind == "erp_post":
                erp.post(planned.event)
                result.erp_postings += 1
            elif action.kind == "mes_backflush":
                _backflush(mes_client, planned.event, publisher, result)
            elif action.kind == "publish":
                assert planned.sent is not None
                publisher.publish(planned.sent)
            elif action.kind == "publish_to_tap":
                assert planned.sent is not None
                publisher.raw("", publisher.topology.ledger_tap, planned.sent.to_body(), planned.event.transaction_id)
            elif action.kind == "publish_malformed":
                assert planned.sent_body is not None
                publisher.raw(publisher.topology.exchange, planned.event.routing_key, planned.sent_body,
                              planned.event.transaction_id)  # fmt: skip
        checkpoint("end of the run")
    finally:
        publisher.close()
        if own_erp:
            erp.dispose()
    result.published, result.to_work_queues = publisher.published, publisher.to_work_queues
    result.seconds = time.monotonic() - started
    record_finished(settings, sim.run_id, result.published)
    return result


def _backflush(mes_client: ReferenceMesClient, event: InventoryEvent, publisher: _Publisher, result: RunResult) -> None:
    answer = mes_client.backflush(event.material_number, event.material_type, event.location, event.quantity,
                                  event.unit, event.erp_reference, event.transaction_id, event.timestamp)  # fmt: skip
    if answer.event != event:
        raise SimulationError(
            f"the MES booked backflush {event.transaction_id} as {answer.event.to_message()}, not as planned "
            f"({event.to_message()}); is it a different MES than the one this home was simulated with?"
        )
    result.backflushes += 1
    if answer.status == "duplicate":
        return  # booked by an earlier run of this plan; the MES publishes nothing this time
    if answer.published:
        publisher.count(event.routing_key)
    else:
        # The MES keeps it as unpublished (no publisher, or the broker refused): the ledger misses it.
        result.unpublished_backflushes.append(event.transaction_id)
