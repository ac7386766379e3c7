"""The plant simulator against the real broker, the reference MES on an ephemeral port and the real sync worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.messaging.drain import drain_ledger_tap
from invsync_pipeline.reference.faults import FAULT_TYPES, FaultProfile, FaultProfileError
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_publisher import MesPublisher
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.reference.simulator import (
    BackgroundWorker,
    compare_stock,
    default_start,
    generate,
    ground_truth,
    planned_events,
    run,
)
from invsync_pipeline.sources.erp import ErpDatabase

pytestmark = pytest.mark.broker

TOKEN = "sim-token"


@pytest.fixture
def plant(settings, topology, tmp_path):
    """ERP tables, the reference MES publishing through its own outbox, and a sync worker on a thread."""
    mes = run_in_thread(tmp_path / "mes.sqlite", TOKEN, publish=MesPublisher(settings))
    client = ReferenceMesClient(mes.url, TOKEN)
    erp = ErpDatabase.from_settings(settings)
    worker = BackgroundWorker(settings, client).start()
    yield erp, client, worker
    worker.stop()
    client.close()
    mes.stop()
    erp.dispose()


def _simulate(settings, plant, faults: str):
    erp, client, worker = plant
    sim = generate(11, default_start(2), 2, "small", faults)
    return sim, run(sim, settings, client, erp=erp, worker=worker, drain_timeout=60)


def test_the_same_seed_plans_the_same_events_and_faults_and_another_seed_does_not():
    start = datetime(2026, 11, 24, 8, tzinfo=UTC)

    first, again, other = (generate(seed, start, 3, "small", "default") for seed in (7, 7, 8))

    assert first == again
    assert [p.event for p in first.events] == [p.event for p in again.events]
    assert first.faults == again.faults
    assert {p.event.transaction_id for p in first.events}.isdisjoint(p.event.transaction_id for p in other.events)
    assert [p.event.quantity for p in first.events] != [p.event.quantity for p in other.events]
    assert first.faults_by_type() == FaultProfile.default().counts == other.faults_by_type()


def test_a_fault_profile_file_names_the_wrong_fault_type(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text("faults: {duplicate: 3, lost_messages: 1}\n")

    with pytest.raises(FaultProfileError, match="unknown fault type 'lost_messages'; use one of lost_message"):
        FaultProfile.from_yaml(path)

    path.write_text("name: dups\nfaults: {duplicate: 3}\n")
    assert generate(1, datetime(2026, 11, 24, 8, tzinfo=UTC), 1, "small", str(path)).faults_by_type() == {
        "duplicate": 3
    }


def test_a_run_without_faults_leaves_mes_stock_equal_to_erp_stock(settings, plant):
    erp, client, _ = plant
    sim, result = _simulate(settings, plant, "none")

    comparison = compare_stock(erp, client, sim.end)

    assert result.erp_postings == len(sim.events) and result.backflushes > 0
    assert len(comparison) == len(sim.plant.stock_keys())
    assert (comparison["difference"] == 0).all(), comparison[comparison["difference"] != 0].to_string()
    assert (compare_stock(erp, client)["difference"] == 0).all()  # now, too
    assert ground_truth(settings).empty


def test_a_run_with_faults_differs_only_where_faults_were_injected_and_the_truth_lists_each(settings, plant):
    erp, client, _ = plant
    sim, _ = _simulate(settings, plant, "default")

    truth = ground_truth(settings)
    comparison = compare_stock(erp, client, sim.end, truth)

    clean = comparison[~comparison["fault_touched"]]
    assert len(clean) >= 10 and (clean["difference"] == 0).all(), clean[clean["difference"] != 0].to_string()
    assert comparison["matches_ground_truth"].all(), comparison[~comparison["matches_ground_truth"]].to_string()
    assert truth.groupby("fault_type")["fault_id"].nunique().to_dict() == dict.fromkeys(FAULT_TYPES, 2)
    assert dict(zip(truth["fault_type"], truth["expected_cause"], strict=True)) == {
        "lost_message": "missing_in_mes", "erp_posting_never_sent": "not_published", "duplicate": "none",
        "late_delivery": "late_delivery", "out_of_order": "none", "malformed": "quarantined",
        "mes_consumption_not_in_erp": "missing_in_erp", "uom_mismatch": "unit_mismatch",
    }  # fmt: skip
    reaches_mes = {"duplicate", "late_delivery", "out_of_order", "mes_consumption_not_in_erp", "uom_mismatch"}
    for fault in truth.itertuples():
        assert fault.transaction_ids and fault.partition_key.endswith(":00")
        for tx in fault.transaction_ids:
            assert (erp.posting(tx) is not None) == (fault.fault_type != "mes_consumption_not_in_erp"), tx
            assert (client.find_transaction(tx) is not None) == (fault.fault_type in reaches_mes), tx
    events = planned_events(settings)
    assert len(events) == len(sim.events)
    assert set(events.loc[events["fault_id"].notna(), "fault_id"]) == set(truth["fault_id"])


def test_the_ledger_tap_received_every_published_message_duplicates_included(settings, plant):
    sim, result = _simulate(settings, plant, "default")

    drained = drain_ledger_tap(settings, max_seconds=30)

    planned = sum(a.kind.startswith("publish") or a.kind == "mes_backflush" for a in sim.actions)
    assert result.published == planned
    assert drained.staged + drained.quarantined == result.published
    assert drained.quarantined == 2  # the malformed ones


def test_the_simulate_command_verifies_and_fails_when_the_mes_misses_events(settings, topology):
    runner = CliRunner()

    ok = runner.invoke(main, ["simulate", "--hours", "1", "--seed", "3", "--faults", "none", "--verify"])
    behind = runner.invoke(main, ["simulate", "--hours", "1", "--seed", "4", "--no-worker", "--verify"])

    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output.strip().splitlines()[-1])
    assert summary["verify"]["unexpected"] == 0 and summary["faults"] == {}
    assert behind.exit_code == 1, behind.output
    assert "differ without a fault" in behind.output
