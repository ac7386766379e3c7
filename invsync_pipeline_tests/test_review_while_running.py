"""Supervisors decide while a run holds DuckDB; the next run applies each decision once.

Everything is real: the plant (broker, ERP tables, reference MES, worker), a DuckDB writer lock
held by another process as a run holds it, the review page over HTTP and the CLI. One scenario
shares one reconciliation, to keep the suite lean.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import dagster as dg
import pika
import pytest
import requests
from click.testing import CliRunner

from invsync_pipeline.assets.review_decisions import review_decisions
from invsync_pipeline.cli import main
from invsync_pipeline.contract import parse_event
from invsync_pipeline.ops.alerts import alerts as stored_alerts
from invsync_pipeline.recon.review_store import review_store
from invsync_pipeline.sensors.review_decisions import review_decisions_sensor
from invsync_pipeline.settings import load_settings
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.factories import event
from invsync_pipeline_tests.recon_plant import (
    erp_posts_and_publishes,
    hour_ago,
    key_of,
    plant_fixture,  # noqa: F401 - the `plant` fixture
    reconcile_with_corrections,
    resources,
    settle,
    stamp,
)
from invsync_pipeline_tests.review_server import PASSWORD, csrf_of, serve

pytestmark = pytest.mark.broker

HOLD = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
print("holding", flush=True)
time.sleep(120)
"""


def _hold(path, mode: str) -> subprocess.Popen:
    """Another process holding the DuckDB file: ``write`` as a run does, ``read`` as an analyst does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _decide(session: requests.Session, url: str, cid: str, token: str, **form: str) -> requests.Response:
    """Post the item's decision form (``token``: as the page handed it out, e.g. in a second tab)."""
    return session.post(f"{url}/items/{cid}/decision", data={"csrf": token, **form}, allow_redirects=False, timeout=10)


def test_supervisors_decide_while_a_run_holds_the_warehouse_and_the_next_run_applies_each_decision_once(
    settings, topology, connection, plant, monkeypatch
):
    monkeypatch.setenv("INVSYNC_REVIEW_PASSWORD", PASSWORD)
    erp, mes = plant
    hour = hour_ago(4)
    materials = ["BIG-A", "BIG-B", "BIG-C"]
    erp_posts_and_publishes(settings, erp, [event(material_number=m, quantity="1000", timestamp=stamp(hour, 5))
                                            for m in materials])  # fmt: skip
    lost = {m: parse_event(event(material_number=m, quantity="600", timestamp=stamp(hour, 10))) for m in materials}
    channel = connection.channel()
    for movement in lost.values():  # booked in the ERP, reach the ledger but never the MES: 60%, critical
        erp.post(movement)
        channel.basic_publish("", topology.ledger_tap, movement.to_body(), pika.BasicProperties(delivery_mode=2))
    settle(settings, connection, topology)
    reconcile_with_corrections(key_of(hour))
    with review_store(settings) as store:
        held = {item["material_number"]: item["correction_id"] for item in store.queue()}
    assert sorted(held) == materials
    links = [a["message"] for a in stored_alerts(settings) if a["kind"] == "correction_review"]
    assert all(any(f"{settings.review.base_url}/items/{cid}" in m for m in links) for cid in held.values())

    run = _hold(settings.warehouse_path, "write")  # a pipeline run holds DuckDB's one writer lock
    try:
        with serve(load_settings()) as url:
            assert requests.get(f"{url}/", timeout=10).status_code == 401  # signed out
            session = requests.Session()
            session.auth = ("sam", PASSWORD)
            queue = session.get(f"{url}/?plant=WH01&cause=missing_in_mes", timeout=10).text
            assert all(cid in queue for cid in held.values())
            assert "Nothing here" in session.get(f"{url}/?plant=WH99", timeout=10).text
            item = session.get(f"{url}/items/{held['BIG-A']}", timeout=10).text
            assert lost["BIG-A"].transaction_id in item and "erp_wins_receipts_and_shipments" in item
            token = csrf_of(item)

            forged = {"decision": "approve", "by": "Sam", "reason": "x"}  # a form not from this page
            stale = _decide(session, url, held["BIG-A"], "0" * 64, **forged)
            assert stale.status_code == 403
            approved = _decide(
                session, url, held["BIG-A"], token, decision="approve", by="Sam Lee", reason="seen on the dock"
            )
            assert approved.status_code == 303, approved.text
            again = _decide(session, url, held["BIG-A"], token, decision="approve", by="Ana Ruiz", reason="me too")
            assert again.status_code == 409 and "not waiting for review" in again.text
            assert "waiting for the next run" in session.get(f"{url}/items/{held['BIG-A']}", timeout=10).text

            runner = CliRunner()
            listed = runner.invoke(main, ["review", "list", "--plant", "WH01"])
            assert listed.exit_code == 0 and held["BIG-B"] in listed.output and held["BIG-A"] not in listed.output
            cli_again = runner.invoke(main, ["review", "approve", held["BIG-A"], "--by", "Ana Ruiz"])
            assert cli_again.exit_code == 2 and "is approved, not waiting for review" in cli_again.output
            rejected = runner.invoke(main, ["review", "reject", held["BIG-C"], "--by", "Ana Ruiz",
                                            "--note", "count pending"])  # fmt: skip
            assert rejected.exit_code == 0, rejected.output
            page_again = _decide(session, url, held["BIG-C"], token, decision="approve", by="Sam Lee", reason="late")
            assert page_again.status_code == 409 and "is rejected" in page_again.text
    finally:
        run.kill()
        run.wait(30)

    # The sensor sees the waiting approval in the store (never DuckDB) and asks for a run.
    requested = review_decisions_sensor(dg.build_sensor_context())
    assert len(requested.run_requests) == 1
    assert dg.materialize([review_decisions], resources=resources()).success
    assert review_decisions_sensor(dg.build_sensor_context()).run_requests in ([], None)
    settle(settings, connection, topology)

    # The next hourly run finds nothing left to apply, while an analyst keeps analyst.duckdb open.
    analyst = _hold(settings.home / "analyst.duckdb", "read")
    try:
        reconcile_with_corrections(key_of(hour))
    finally:
        analyst.kill()
        analyst.wait(30)
    settle(settings, connection, topology)

    assert _applied_times(mes, lost["BIG-A"].transaction_id) == 1
    assert _mes_stock(mes, "BIG-A") == Decimal("1600")
    with review_store(settings) as store:
        trail = [(a["action"], a["actor"]) for a in store.trail(held["BIG-A"])]
        assert store.item(held["BIG-A"])["applied_at"] is not None
    assert trail == [("held", "auto:erp_wins_receipts_and_shipments"), ("approved", "supervisor:Sam Lee"),
                     ("applied", "auto:hourly")]  # fmt: skip
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:  # the analysts' copy
        statuses = dict(conn.execute("SELECT material_number, status FROM recon.corrections").fetchall())
        copied = conn.execute("SELECT action, actor FROM recon.correction_audit_log WHERE correction_id = ? "
                              "ORDER BY logged_at", [held["BIG-A"]]).fetchall()  # fmt: skip
    assert statuses == {"BIG-A": "approved", "BIG-B": "held_for_review", "BIG-C": "rejected"}
    assert copied == trail


def _applied_times(mes, transaction_id: str) -> int:
    return sum(1 for row in mes.applied_transactions() if row["transaction_id"] == transaction_id
               and row["status"] == "applied")  # fmt: skip


def _mes_stock(mes, material: str) -> Decimal:
    return sum((r.quantity for r in mes.stock(material_number=material)), Decimal(0))
