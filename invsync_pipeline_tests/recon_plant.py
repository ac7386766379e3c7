"""A small live plant for reconciliation tests: ERP tables, the reference MES, a worker, helpers.

Tests import the ``plant`` fixture (as ``plant_fixture``) and the helpers from here; everything is real (the local
broker, SQLite ERP tables, the reference MES on an ephemeral port, DuckDB under tmp_path).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import yaml

from invsync_pipeline.assets.corrections import auto_corrections, correction_audit_log
from invsync_pipeline.assets.exports import analyst_exports
from invsync_pipeline.assets.ledger import transaction_ledger
from invsync_pipeline.assets.snapshots import erp_inventory_snapshot, mes_inventory_snapshot
from invsync_pipeline.assets.staging import staged_inventory_events
from invsync_pipeline.assets.variances import inventory_variances, variance_investigation
from invsync_pipeline.contract import parse_event
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.messaging.outbox import Outbox
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline_tests.factories import queue_depth

TOKEN = "recon-token"
RECON_ASSETS = [staged_inventory_events, transaction_ledger, erp_inventory_snapshot, mes_inventory_snapshot,
                inventory_variances, variance_investigation]  # fmt: skip


@dataclass
class Plant:
    """What the ``plant`` fixture gives: unpacks as ``erp, mes``; ``stop_worker``/``start_worker``
    take the sync worker away and bring it back (a worker restart, or a consumer-less queue)."""

    settings: object
    erp: ErpDatabase
    mes: ReferenceMesClient
    _running: list = field(default_factory=list)

    def __iter__(self):
        return iter((self.erp, self.mes))

    def start_worker(self) -> None:
        worker = SyncWorker(self.settings, self.mes)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self._running.append((worker, thread))

    def stop_worker(self) -> None:
        while self._running:
            worker, thread = self._running.pop()
            worker.stop()
            thread.join(15)


@pytest.fixture(name="plant")
def plant_fixture(settings, topology, connection, tmp_path, monkeypatch):
    """ERP tables, the reference MES publishing through its own outbox, and a running worker."""
    erp = ErpDatabase.from_settings(settings)
    erp.create_schema()

    def publish(evt):
        with Outbox(settings, path=settings.home / "mes-outbox.sqlite") as box:
            box.publish([evt])

    mes = run_in_thread(tmp_path / "mes.sqlite", TOKEN, publish=publish)
    monkeypatch.setenv("INVSYNC_MES_URL", mes.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    plant = Plant(settings, erp, ReferenceMesClient(mes.url, TOKEN))
    plant.start_worker()
    yield plant
    plant.stop_worker()
    mes.stop()
    erp.dispose()


def hour_ago(hours: int) -> datetime:
    """The start of the UTC hour ``hours`` before the current one."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


def key_of(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:00")


def stamp(hour: datetime, minutes: float) -> str:
    return (hour + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def erp_posts_and_publishes(settings, erp, events) -> None:
    """Post each event (a dict or an InventoryEvent) in the ERP, then publish them through the outbox."""
    parsed = [parse_event(e) if isinstance(e, dict) else e for e in events]
    for e in parsed:
        erp.post(e)
    with Outbox(settings) as box:
        box.publish(parsed)


def settle(settings, connection, topology) -> None:
    """Wait until the worker emptied the plant queues, then drain the ledger tap."""
    deadline = time.monotonic() + 20
    while any(queue_depth(connection, q) for q in topology.work_queues):
        assert time.monotonic() < deadline, "the worker did not drain the plant queues"
        time.sleep(0.1)
    time.sleep(0.3)
    drain_ledger_tap(settings)


def resources() -> dict:
    """The resources of a reconciliation run, each on the test's settings (the environment)."""
    return {"invsync": InvsyncResource(), "warehouse": WarehouseResource(), "erp": ErpResource(), "mes": MesResource()}


def reconcile(hour_key: str) -> None:
    result = dg.materialize(RECON_ASSETS, partition_key=hour_key, resources=resources())
    assert result.success


def reconcile_with_corrections(hour_key: str) -> None:
    result = dg.materialize(
        [*RECON_ASSETS, auto_corrections, correction_audit_log, analyst_exports],
        partition_key=hour_key,
        resources=resources(),
        run_config={"ops": {"auto_corrections": {"config": {"effective_at": "next_hour_start"}}}},
    )
    assert result.success


def set_config(settings_path, **sections) -> None:
    """Change sections of the test's config file (INVSYNC_CONFIG); runs read it afresh."""
    config = yaml.safe_load(settings_path.read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    settings_path.write_text(yaml.safe_dump(config))
