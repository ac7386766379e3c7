"""The review store on SQLite and PostgreSQL: a decision is taken once, and applied once, however many race."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from invsync_pipeline.recon.corrections import Correction, ReviewError
from invsync_pipeline.recon.review_store import ReviewStore
from invsync_pipeline.review_page.app import create_app
from invsync_pipeline.settings import ConfigError, load_settings
from invsync_pipeline_tests.test_erp import PG_START, PG_URL

HOUR = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _held(cid: str, location: str = "WH01/RM01", cause: str = "missing_in_mes") -> Correction:
    return Correction(
        correction_id=cid, partition_hour=HOUR, material_number="MAT-1", material_type="raw", location=location,
        unit="KG", cause=cause, target_system="MES", quantity=Decimal("600.5"), truth="ERP",
        rule="erp_wins_receipts_and_shipments", pct_of_balance=Decimal("60.05"), value=Decimal("1201.00"),
        critical=True, status="held_for_review", decided_by="auto:erp_wins_receipts_and_shipments",
        before_quantity=Decimal(1000), explained_by=("TX-1", "TX-2"), note="critical", method="resend",
    )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        made = ReviewStore(f"sqlite:///{tmp_path / 'ops.sqlite'}")
        yield made
        made.dispose()
        return
    schema = f"review_test_{uuid.uuid4().hex[:12]}"
    try:
        made = ReviewStore(PG_URL, schema=schema)
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc.orig}).\nStart it with: {PG_START}", pytrace=False)
    yield made
    with made.engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    made.dispose()


def _race(n: int, attempt) -> list[object]:
    """Run ``attempt(i)`` in ``n`` threads at once; what each returned or raised."""
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except ReviewError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_of_racing_decisions_on_one_item_exactly_one_is_taken_and_applied_once(store):
    assert store.hold(_held("RECON-1"), {"balances": {"erp_end": "1600"}})
    assert not store.hold(_held("RECON-1"), {})  # a rerun of the hour holds nothing twice

    decided = _race(6, lambda i: store.decide("RECON-1", "approved" if i % 2 else "rejected", f"supervisor:S{i}", "ok"))

    taken = [r for r in decided if isinstance(r, dict)]
    assert len(taken) == 1 and all("not waiting for review" in str(r) for r in decided if r is not taken[0])
    item = store.item("RECON-1")
    assert (item["quantity"], item["explained_by"], item["evidence"]) == (
        "600.5",
        ["TX-1", "TX-2"],
        {"balances": {"erp_end": "1600"}},
    )  # exactly as written, on both databases
    if item["status"] == "approved":
        assert store.pending() and [r["correction_id"] for r in store.pending()] == ["RECON-1"]
        applied = _race(4, lambda i: store.mark_applied("RECON-1", "auto:hourly", "ok", HOUR, Decimal(1600), "resend"))
        assert applied.count(True) == 1 and store.pending() == []
    actions = [a["action"] for a in store.trail("RECON-1")]
    assert actions[:2] == ["held", item["status"]] and len(actions) == (3 if item["status"] == "approved" else 2)


def test_the_queue_filters_by_plant_material_type_cause_and_age(store):
    store.hold(_held("RECON-A"), {}, now=datetime(2026, 11, 24, 11, tzinfo=UTC))
    store.hold(_held("RECON-B", location="WH02/FG01", cause="not_published"), {})

    def ids(**filters) -> list[str]:
        return [i["correction_id"] for i in store.queue(**filters)]

    assert ids() == ["RECON-A", "RECON-B"]
    assert ids(plant="WH02") == ["RECON-B"] and ids(cause="missing_in_mes") == ["RECON-A"]
    assert ids(material_type="wip") == [] and ids(min_age_hours=24) == ["RECON-A"]
    assert store.choices() == {"plant": ["WH01", "WH02"], "material_type": ["raw"],
                               "cause": ["missing_in_mes", "not_published"]}  # fmt: skip
    with pytest.raises(ReviewError, match="no correction 'RECON-nope'"):
        store.item("RECON-nope")


def test_the_page_refuses_to_start_without_a_password_and_no_file_may_hold_one(tmp_path, monkeypatch):
    monkeypatch.delenv("INVSYNC_REVIEW_PASSWORD", raising=False)
    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="set INVSYNC_REVIEW_PASSWORD"):
        create_app(load_settings())
    config = tmp_path / "invsync.yaml"
    config.write_text("review_password: hunter2\n")
    with pytest.raises(ConfigError, match="review_password must not be in a config file"):
        load_settings(config)


def test_alerts_live_in_the_operational_database_chosen_by_its_url(tmp_path, monkeypatch):
    from invsync_pipeline.ops.alerts import alerts, raise_alert

    name = f"ops_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc.orig}).\nStart it with: {PG_START}", pytrace=False)
    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path))
    monkeypatch.setenv("INVSYNC_OPS_DB_URL", sa.make_url(PG_URL).set(database=name).render_as_string(False))
    monkeypatch.delenv("INVSYNC_ALERT_WEBHOOK_URL", raising=False)
    try:
        settings = load_settings()
        assert raise_alert(settings, "review:RECON-1", "critical", "correction_review", "MAT-1 needs review", "m")
        assert not raise_alert(settings, "review:RECON-1", "critical", "correction_review", "again", "m")
        assert [(a["alert_id"], a["subject"]) for a in alerts(settings)] == [("review:RECON-1", "MAT-1 needs review")]
        assert not (tmp_path / "ops.sqlite").exists()  # nothing went to the SQLite default
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_definitions_load_with_the_review_decisions_job_and_its_sensor():
    import dagster as dg

    from invsync_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)  # e.g. a job named like an asset fails here
    assert defs.resolve_sensor_def("review_decisions_sensor").job_name == "apply_review_decisions"


def test_the_page_escapes_what_it_shows_and_says_what_a_decision_lacks(settings, monkeypatch):
    import requests

    from invsync_pipeline_tests.review_server import PASSWORD, csrf_of, serve

    monkeypatch.setenv("INVSYNC_REVIEW_PASSWORD", PASSWORD)
    hostile = replace(_held("RECON-x"), material_number="<script>alert(1)</script>", note='"><img src=x>')
    with ReviewStore(load_settings().ops_url) as store:
        store.hold(hostile, {"movements": [{"transaction_id": "<b>TX</b>"}]})
    with serve(load_settings()) as url:
        session = requests.Session()
        session.auth = ("Sam Lee", PASSWORD)
        page = session.get(f"{url}/items/RECON-x", timeout=10).text
        assert "<script>alert" not in page and "<img src=x>" not in page and "<b>TX</b>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and 'value="Sam Lee"' in page  # the signed-in name
        form = {"csrf": csrf_of(page), "decision": "reject", "by": " ", "reason": "no"}
        nameless = session.post(f"{url}/items/RECON-x/decision", data=form, timeout=10)
        assert nameless.status_code == 409 and "your name is required" in nameless.text
        foreign = session.post(f"{url}/items/RECON-x/decision", data={**form, "by": "Sam"}, timeout=10,
                               headers={"Origin": "https://evil.example"})  # fmt: skip
        assert foreign.status_code == 403
        assert session.get(f"{url}/items/RECON-nope", timeout=10).status_code == 404
    with ReviewStore(load_settings().ops_url) as store:
        assert store.item("RECON-x")["status"] == "held_for_review"  # nothing was decided


def test_a_plants_run_sees_and_carries_out_only_its_plants_items(tmp_path):
    """Plants share the review store and each has its own DuckDB file: a plant's code location
    (INVSYNC_PLANT) applies and copies only its own plant's decisions."""
    url = f"sqlite:///{tmp_path / 'ops.sqlite'}"
    with ReviewStore(url) as every, ReviewStore(url, plant="WH02") as wh02:
        every.hold(_held("RECON-A"), {})
        every.hold(_held("RECON-B", location="WH02/FG01"), {})
        for cid in ("RECON-A", "RECON-B"):
            every.decide(cid, "approved", "supervisor:J. Smith", "counted")
        assert [i["correction_id"] for i in every.pending()] == ["RECON-A", "RECON-B"]
        assert [i["correction_id"] for i in wh02.pending()] == ["RECON-B"]
        assert [i["correction_id"] for i in wh02.queue("approved")] == ["RECON-B"]
        assert {r["correction_id"] for r in wh02.trail_since(0)} == {"RECON-B"}
