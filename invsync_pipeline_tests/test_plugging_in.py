"""A plant's own systems plug in: another MES handed in as a resource, and a plant onboarded at a cut-off.

The MES here is written for the test, in process: not the reference service. It implements the
small interface the pipeline needs (sources/mes.py: MesApi), and the worker, the hourly
reconciliation and its corrections run against it through a MesResource subclass.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import InventoryEvent, instant_text, parse_event
from invsync_pipeline.onboarding import OnboardingError, onboard
from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.sources.mes import MesApi, MesError, PostResult, StockRow
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event
from invsync_pipeline_tests.recon_plant import (
    RECON_ASSETS,
    erp_posts_and_publishes,
    hour_ago,
    key_of,
    plant_fixture,  # noqa: F401 - the `plant` fixture
    settle,
    stamp,
)

pytestmark = pytest.mark.broker


class InMemoryMes(MesApi):
    """An MES that keeps everything in a dict: idempotent by transaction_id, stock as of an
    instant by event time, an applied log in applied order."""

    def __init__(self) -> None:
        self.log: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def post_transaction(self, event: InventoryEvent) -> PostResult:
        with self._lock:
            if (known := self.log.get(event.transaction_id)) is not None:
                return PostResult(known["mes_transaction_id"], "duplicate", event.transaction_id)
            applies = not (event.source_system == "RECON" and event.target_system == "ERP")
            movements = []
            for location, change in event.stock_effects() if applies else []:
                before = self._balance(location, event.material_number, event.unit)
                movements.append(_movement(location, event, before, before + change))
            if applies and event.transaction_type == "cycle_count":
                before = self._balance(event.location, event.material_number, event.unit)
                movements.append(_movement(event.location, event, before, event.quantity))
            entry = {**event.to_message(), "mes_transaction_id": f"MEM-{next(self._ids)}",
                     "status": "applied" if applies else "not_applicable",
                     "applied_at": instant_text(datetime.now(UTC)), "movements": movements}  # fmt: skip
            self.log[event.transaction_id] = entry
            return PostResult(entry["mes_transaction_id"], entry["status"], event.transaction_id)

    def post_transactions(self, events: list[InventoryEvent]) -> list[PostResult | MesError]:
        return [self.post_transaction(e) for e in events]

    def stock(self, location=None, material_number=None, as_of=None, warehouse=None) -> Iterator[StockRow]:
        cutoff = _instant(as_of)
        totals: dict[tuple[str, str, str], Decimal] = {}
        with self._lock:
            for entry in self.log.values():
                if cutoff is not None and _instant(entry["timestamp"]) >= cutoff:
                    continue
                for mv in entry["movements"]:
                    key = (mv["location"], mv["material_number"], mv["unit"])
                    totals[key] = totals.get(key, Decimal(0)) + Decimal(mv["after"]) - Decimal(mv["before"])
        for (loc, material, unit), quantity in sorted(totals.items()):
            if (
                (location in (None, loc))
                and (material_number in (None, material))
                and (warehouse is None or loc.startswith(f"{warehouse}/"))
            ):
                yield StockRow(loc, material, unit, quantity)

    def applied_transactions(self, since=None, until=None) -> Iterator[dict[str, Any]]:
        since, until = _instant(since), _instant(until)
        with self._lock:
            entries = list(self.log.values())
        for entry in entries:
            applied = _instant(entry["applied_at"])
            if (since is None or applied >= since) and (until is None or applied < until):
                yield entry

    def find_transaction(self, transaction_id: str) -> dict[str, Any] | None:
        return self.log.get(transaction_id)

    def close(self) -> None:
        pass

    def _balance(self, location: str, material: str, unit: str) -> Decimal:
        total = Decimal(0)
        for entry in self.log.values():
            for mv in entry["movements"]:
                if (mv["location"], mv["material_number"], mv["unit"]) == (location, material, unit):
                    total += Decimal(mv["after"]) - Decimal(mv["before"])
        return total


def _movement(location: str, event: InventoryEvent, before: Decimal, after: Decimal) -> dict[str, str]:
    return {"location": location, "material_number": event.material_number, "unit": event.unit,
            "before": str(before), "after": str(after)}  # fmt: skip


def _instant(value: datetime | str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value


_MESES: dict[str, InMemoryMes] = {}


class InMemoryMesResource(MesResource):
    """The plant's own MES as the pipeline gets it: a MesResource whose ``open`` returns it."""

    name: str

    def open(self, mode: str = "live") -> MesApi:
        return _MESES.setdefault(self.name, InMemoryMes())

    def event_path(self, at: datetime | None = None) -> MesApi:
        return self.open()


def test_the_hourly_reconciliation_runs_against_another_mes_handed_in_as_a_resource(
    settings, topology, connection, tmp_path
):
    erp = ErpDatabase.from_settings(settings)
    erp.create_schema()
    mes = _MESES.setdefault("plant-own", InMemoryMes())
    worker = SyncWorker(settings, mes, shadow=mes)  # the worker applies the plant queues to it
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    hour, next_hour = hour_ago(3), hour_ago(2)
    try:
        opening = [event(material_number="OWN-1", quantity="500", timestamp=stamp(hour, 5)),
                   event(material_number="OWN-2", quantity="80", timestamp=stamp(hour, 6))]  # fmt: skip
        erp_posts_and_publishes(settings, erp, opening)
        lost = parse_event(event(material_number="OWN-1", quantity="12", timestamp=stamp(hour, 30)))
        erp.post(lost)  # never sent
        settle(settings, connection, topology)
        resources = {"invsync": InvsyncResource(), "warehouse": WarehouseResource(), "erp": ErpResource(),
                     "mes": InMemoryMesResource(name="plant-own")}  # fmt: skip
        from invsync_pipeline.assets.corrections import auto_corrections

        for key in (key_of(hour), key_of(next_hour)):
            result = dg.materialize([*RECON_ASSETS, auto_corrections], partition_key=key, resources=resources,
                                    run_config={"ops": {"auto_corrections": {"config": {
                                        "effective_at": "next_hour_start"}}}})  # fmt: skip
            assert result.success
            settle(settings, connection, topology)
    finally:
        worker.stop()
        thread.join(15)
        erp.dispose()

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        findings = conn.execute("SELECT partition_hour, material_number, cause, transaction_ids "
                                "FROM recon.variance_investigation ORDER BY ALL").fetchall()  # fmt: skip
        snapshot_source = conn.execute("SELECT count(*) FROM snapshots.mes_inventory WHERE partition_hour = ?",
                                       [hour]).fetchone()[0]  # fmt: skip
    assert snapshot_source == 2  # the MES snapshot came from the in-process MES
    assert findings == [(hour, "OWN-1", "not_published", [lost.transaction_id])]  # the next hour agrees
    assert mes.find_transaction(lost.transaction_id)["status"] == "applied"  # re-sent by the correction, once
    assert {r.material_number: r.quantity for r in mes.stock()} == {"OWN-1": Decimal("512"), "OWN-2": Decimal("80")}


def _first_hour_agrees(settings, cutoff: datetime) -> list[tuple]:
    result = dg.materialize(RECON_ASSETS, partition_key=key_of(cutoff),
                            resources={"invsync": InvsyncResource(), "warehouse": WarehouseResource(),
                                       "erp": ErpResource(), "mes": MesResource()})  # fmt: skip
    assert result.success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return conn.execute("SELECT material_number, erp_begin, mes_begin, cross_difference FROM recon.variances "
                            "WHERE partition_hour = ? AND is_variance", [cutoff]).fetchall()  # fmt: skip


def test_onboarding_from_the_erp_loads_an_empty_mes_and_the_first_hour_agrees(settings, topology, connection, plant):
    erp, mes = plant
    plant.stop_worker()  # the opening stock reaches the MES by the load, not by events
    before, cutoff = hour_ago(4), hour_ago(3)
    for m, q in (("ON-1", "250"), ("ON-2", "40.5"), ("ON-3", "7")):
        erp.post(parse_event(event(material_number=m, quantity=q, timestamp=stamp(before, 10))))
    assert list(mes.stock()) == []

    dry = CliRunner().invoke(main, ["onboard", "--at", instant_text(cutoff), "--from-erp", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert list(mes.stock()) == []  # a dry run writes nothing
    loaded = CliRunner().invoke(main, ["onboard", "--at", instant_text(cutoff), "--from-erp"])
    again = CliRunner().invoke(main, ["onboard", "--at", instant_text(cutoff), "--from-erp"])

    assert loaded.exit_code == 0, loaded.output
    assert '"posted": 3' in loaded.output and '"first_hour"' in loaded.output
    assert again.exit_code == 0 and '"already_equal": 3' in again.output and '"to_load": 0' in again.output
    assert {r.material_number: r.quantity for r in mes.stock(as_of=cutoff)} == {
        "ON-1": Decimal("250"), "ON-2": Decimal("40.5"), "ON-3": Decimal("7"),
    }  # fmt: skip
    # Movements after the cut-off flow as usual, and the first hour reconciles at 100%.
    plant.start_worker()
    first_hour = [event(material_number="ON-1", quantity="10", timestamp=stamp(cutoff, 5)),
                  event(material_number="ON-3", transaction_type="issue", reason="shipment", movement_type="601",
                        quantity="2", timestamp=stamp(cutoff, 9))]  # fmt: skip
    erp_posts_and_publishes(settings, erp, first_hour)
    settle(settings, connection, topology)
    assert _first_hour_agrees(settings, cutoff) == []


def test_onboarding_from_a_csv_reports_keys_the_mes_already_holds_otherwise(
    settings, topology, connection, plant, tmp_path
):
    erp, mes = plant
    cutoff = hour_ago(3)
    mes.post_transaction(parse_event(event(material_number="CSV-2", quantity="9", timestamp=stamp(hour_ago(5), 1))))
    path = tmp_path / "opening.csv"
    path.write_text("material_number,material_type,unit,location,quantity\nCSV-1,raw,KG,WH01/RM01,120.250\n"
                    "CSV-2,raw,KG,WH01/RM01,30\nCSV-3,finished,EA,WH01/FG01,0\n")  # fmt: skip

    outcome = onboard(mes, cutoff, csv_path=path)

    assert (outcome.balances, outcome.to_load, outcome.already_equal) == (3, 1, 1)  # CSV-3's zero needs nothing
    assert outcome.disagreements == [(("CSV-2", "WH01/RM01", "KG"), Decimal("9"), Decimal("30"))]
    assert {r.material_number: r.quantity for r in mes.stock(as_of=cutoff)} == {
        "CSV-1": Decimal("120.25"), "CSV-2": Decimal("9"),
    }  # fmt: skip
    assert onboard(mes, cutoff, csv_path=path, overwrite=True).load.posted == 1
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "material_number,material_type,unit,location,quantity\nX,raw,KG,WH01/RM01,12\nY,gold,KG,WH01/RM01,1\n"
    )
    with pytest.raises(OnboardingError, match="line 3: material_type='gold'"):
        onboard(mes, cutoff, csv_path=bad)
    with pytest.raises(OnboardingError, match="must be a whole hour"):
        onboard(mes, cutoff.replace(minute=30), csv_path=path)
