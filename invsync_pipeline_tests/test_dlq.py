"""Dead-letter tooling on the real broker: list, replay once, refuse the malformed, discard with audit."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.messaging.dlq import DlqAudit, Filters, browse
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.sync.worker import SyncWorker
from invsync_pipeline_tests.factories import event, publish_events, publish_raw, queue_depth
from invsync_pipeline_tests.test_sync_worker import _wait

pytestmark = pytest.mark.broker
TOKEN = "dlq-token"


@pytest.fixture
def parked(settings, topology, connection, tmp_path, monkeypatch):
    """Two valid receipts parked after the MES was down through every retry, and one malformed."""
    mes = run_in_thread(tmp_path / "mes.sqlite", TOKEN)
    monkeypatch.setenv("INVSYNC_MES_URL", mes.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    client = ReferenceMesClient(mes.url, TOKEN)
    client.set_faults(outage=True)
    good = [event(material_number="RAW-1", quantity="5"), event(material_number="FG-1", material_type="finished",
                                                                reason="production_receipt", quantity="2")]  # fmt: skip
    bad = event(material_number="RAW-2", quantity="-1")
    publish_events(connection, topology.exchange, good)
    publish_raw(connection, topology.exchange, [("inventory.wh01.raw.receipt", json.dumps(bad).encode())])
    worker = SyncWorker(settings, client)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    _wait(lambda: worker.stats.parked == 3, timeout=30, what="3 parked")
    client.set_faults(outage=False)
    yield good, bad, client, worker
    worker.stop()
    thread.join(15)
    mes.stop()


def _applied(client) -> list[str]:
    return [r["transaction_id"] for r in client.applied_transactions() if r["status"] == "applied"]


def test_dlq_list_shows_parked_messages_with_reasons_and_filters(settings, parked):
    good, bad, *_ = parked
    runner = CliRunner()

    everything = runner.invoke(main, ["dlq", "list", "--json"])
    raw_only = runner.invoke(main, ["dlq", "list", "--json", "--material", "RAW-*", "--reason", "invalid"])

    rows = [json.loads(line) for line in everything.output.splitlines()]
    assert {r["transaction_id"] for r in rows} == {good[0]["transaction_id"], good[1]["transaction_id"],
                                                   bad["transaction_id"]}  # fmt: skip
    assert [json.loads(line)["transaction_id"] for line in raw_only.output.splitlines()] == [bad["transaction_id"]]
    assert len(browse(settings)) == 3  # listing removed nothing


def test_a_replayed_parked_event_is_applied_once_even_when_replayed_twice(settings, topology, connection, parked):
    good, _, client, worker = parked
    tx = good[0]["transaction_id"]
    runner = CliRunner()

    dry = runner.invoke(main, ["dlq", "replay", "--tx", tx, "--dry-run"])
    assert dry.exit_code == 0 and "would replay" in dry.output
    assert len(browse(settings, Filters(transaction_ids=(tx,)))) == 1  # the dry run changed nothing

    first = runner.invoke(main, ["dlq", "replay", "--tx", tx, "--by", "night-shift"])
    assert first.exit_code == 0, first.output
    _wait(lambda: tx in _applied(client), what="replayed event applied")
    # Replayed again (say, from an old copy): the MES knows the transaction_id.
    publish_events(connection, topology.exchange, [good[0]])
    _wait(lambda: worker.stats.duplicates + worker.stats.applied >= 2, what="second copy handled")

    assert _applied(client).count(tx) == 1
    assert browse(settings, Filters(transaction_ids=(tx,))) == []
    audit = DlqAudit(settings)
    assert [(a, who, t) for _, a, who, t, *_ in audit.rows()] == [("replayed", "night-shift", tx)]
    audit.close()


def test_replaying_a_malformed_message_is_refused_with_its_reason_and_it_stays_parked(settings, parked):
    _, bad, client, _ = parked

    result = CliRunner().invoke(main, ["dlq", "replay", "--tx", bad["transaction_id"]])

    assert result.exit_code == 1
    assert "refused" in result.output and "quantity=-1" in result.output
    assert len(browse(settings, Filters(transaction_ids=(bad["transaction_id"],)))) == 1
    assert bad["transaction_id"] not in _applied(client)


def test_discard_needs_a_reason_and_keeps_the_message_in_the_audit(settings, topology, connection, parked):
    _, bad, *_ = parked
    runner = CliRunner()
    assert runner.invoke(main, ["dlq", "discard", "--tx", bad["transaction_id"], "--note", " "]).exit_code == 2

    tx = bad["transaction_id"]
    result = runner.invoke(main, ["dlq", "discard", "--tx", tx, "--note", "test data", "--by", "ops"])

    assert result.exit_code == 0 and "1 discarded" in result.output
    assert queue_depth(connection, topology.parking) == 2
    audit = DlqAudit(settings)
    (row,) = [r for r in audit.rows() if r[1] == "discarded"]
    assert row[2:4] == ("ops", bad["transaction_id"]) and row[5] == "test data"
    audit.close()
