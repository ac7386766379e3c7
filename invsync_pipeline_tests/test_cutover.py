"""The cutover: a compressed shadow period beside the batch sync, daily accuracy, the gate, go-live and rollback."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest
import yaml

from invsync_pipeline.cutover.state import CutoverState, SwitchRefused
from invsync_pipeline.cutover.switch import mes_client_for, switch_to
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.reference.shadow_period import ShadowPeriod, run_shadow_period
from invsync_pipeline.reference.sim_run import BackgroundWorker
from invsync_pipeline.settings import load_settings
from invsync_pipeline.sources.erp import ErpDatabase
from invsync_pipeline.warehouse import open_warehouse

pytestmark = [pytest.mark.broker]

TOKEN = "test-token-not-a-secret"


def _configure(settings, monkeypatch, tmp_path, mes_url: str, cutover: dict):
    """Write the cutover section and the MES into the test's config, as an operator would."""
    import os

    path = os.environ["INVSYNC_CONFIG"]
    with open(path) as config_file:
        config = yaml.safe_load(config_file)
    config["cutover"] = cutover
    with open(path, "w") as out:
        out.write(yaml.safe_dump(config))
    monkeypatch.setenv("INVSYNC_MES_URL", mes_url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    return load_settings()


@pytest.fixture
def mes(settings):
    running = run_in_thread(settings.home / "mes.sqlite", TOKEN)
    yield running
    running.stop()


def _erp_knowing(settings, materials) -> ErpDatabase:
    """The ERP tables with these (material, type) in the material master."""
    erp = ErpDatabase.from_settings(settings)
    erp.create_schema()
    for material, material_type in materials:
        erp.upsert_material(material, material_type, "KG" if material_type == "raw" else "EA")
    return erp


def _cutover_dict(period: ShadowPeriod, **extra) -> dict:
    return {
        "initial_mode": "shadow",
        "pilot": [{"since": s.since.isoformat(), "material_types": list(s.material_types)} for s in period.pilot()],
        "gate": {"min_accuracy": 0.995, "consecutive_days": 7},
        **extra,
    }


def _compare(days: list[str], instance) -> dg.ExecuteInProcessResult:
    from invsync_pipeline.definitions import defs

    job = defs.resolve_job_def("cutover_daily")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    # One run for the whole range, as the single-run backfill policy has the daemon do it.
    tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
    return job.execute_in_process(instance=instance, tags=tags, run_config=quiet)


def test_a_shadow_period_backfills_and_the_gate_flips_once_the_early_problem_is_fixed(
    settings, topology, mes, monkeypatch, tmp_path
):
    from invsync_pipeline.checks.cutover import go_live_readiness
    from invsync_pipeline.resources import InvsyncResource, WarehouseResource

    period = ShadowPeriod(days=21, fix_day=7, widen_day=14)
    settings = _configure(settings, monkeypatch, tmp_path, mes.url, _cutover_dict(period))
    worker = BackgroundWorker(settings, mes_client_for(settings, "live")).start()
    try:
        outcome = run_shadow_period(period, settings, worker)
    finally:
        worker.stop()
    assert outcome.lost_to_the_problem > 0 and outcome.batch_runs == 21 * 12 and outcome.seeds == 2

    days = [(period.start + timedelta(days=d)).date().isoformat() for d in range(period.days)]
    instance = dg.DagsterInstance.ephemeral()
    assert _compare(days[:10], instance).success

    def gate():
        return go_live_readiness(dg.build_asset_check_context(), InvsyncResource(), WarehouseResource())

    early = gate()
    assert not early.passed  # days 7-9 are at the gate: 3 of 7
    assert early.metadata["consecutive_days_at_gate"].value == 3

    assert _compare(days[10:], instance).success
    late = gate()
    assert late.passed, late.description
    assert late.metadata["consecutive_days_at_gate"].value == 14
    assert (settings.home / "reports" / "cutover_readiness.svg").read_text().startswith("<svg")

    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        trend = dict(conn.execute(
            "SELECT day::VARCHAR, event_accuracy FROM cutover.daily_accuracy WHERE slice = 'in_scope'"
        ).fetchall())  # fmt: skip
        causes = {c for (c,) in conn.execute(
            "SELECT DISTINCT event_cause FROM cutover.comparison WHERE in_scope AND NOT event_agrees"
        ).fetchall()}  # fmt: skip
        scopes = dict(conn.execute(
            "SELECT day::VARCHAR, any_value(scope) FROM cutover.daily_accuracy GROUP BY ALL"
        ).fetchall())  # fmt: skip
        batch = conn.execute(
            "SELECT (SELECT avg(batch_accuracy) FROM cutover.daily_accuracy WHERE slice = 'in_scope'), "
            "(SELECT count(*) FROM cutover.comparison WHERE batch_cause = 'batch_lag') > 0"
        ).fetchone()
        out_of_scope = conn.execute(
            "SELECT count(*) FROM cutover.comparison WHERE NOT in_scope AND event_cause IS NOT NULL "
            "AND event_cause <> 'out_of_scope'"
        ).fetchone()[0]
    # Under the gate while scrap went unpublished, at it from the fix on: accuracy rises past the gate.
    assert all(trend[d] < 0.995 for d in days[1:7])
    assert all(trend[d] >= 0.995 for d in days[7:])
    assert causes <= {"not_applied", "carried_over"} and "not_applied" in causes
    assert scopes[days[0]] == "packaging+mro" and scopes[days[-1]] == "raw+packaging+mro"
    assert out_of_scope == 0
    # The batch sync misses what moved since its last run; the event-driven path does not.
    assert batch[0] < 1.0 and batch[1]

    # A day compared again reads what it stored: a backfill gives the same result.
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        before = conn.execute("SELECT * FROM cutover.comparison ORDER BY ALL").fetchall()
    assert _compare(days, instance).success
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        assert conn.execute("SELECT * FROM cutover.comparison ORDER BY ALL").fetchall() == before


def test_go_live_and_rollback_apply_every_event_once_across_the_switch(settings, topology, mes, monkeypatch, tmp_path):
    from invsync_pipeline.messaging.outbox import Outbox
    from invsync_pipeline.reference.shadow_period import _Plant

    period = ShadowPeriod(days=1, widen_day=None, fix_day=0)
    settings = _configure(settings, monkeypatch, tmp_path, mes.url, _cutover_dict(period))
    plant = _Plant(period)
    erp = _erp_knowing(settings, plant.materials)
    worker = BackgroundWorker(settings, mes_client_for(settings, "live")).start()
    sent: list = []
    errors: list = []
    stop = threading.Event()

    def plant_floor() -> None:
        outbox = Outbox(settings)
        at = period.start
        batch = plant.opening(at)
        try:
            while not stop.is_set():
                for event in batch:
                    erp.post(event)
                outbox.enqueue(batch)
                outbox.flush_until_empty(60)
                sent.extend(batch)
                at += timedelta(seconds=30)
                batch = [plant.movement(at) for _ in range(5)]
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            outbox.close()

    producer = threading.Thread(target=plant_floor)
    producer.start()
    try:
        threading.Event().wait(1.0)
        live = switch_to(settings, "live", note="test go-live")
        assert live.workers_paused == 1 and live.switch.to_mode == "live"
        threading.Event().wait(1.0)
        back = switch_to(settings, "shadow", note="test rollback")
        assert back.batch_sync is not None and back.batch_sync["mode"] == "shadow"
        threading.Event().wait(0.5)
    finally:
        stop.set()
        producer.join()
    assert not errors
    in_scope = [e for e in sent if e.material_type in ("mro", "packaging")]
    worker.wait_for(len(sent), 60)
    worker.stop()

    shadow_c, live_c = mes_client_for(settings, "shadow"), mes_client_for(settings, "live")
    with CutoverState(settings) as state:
        switches = [s for s in state.history() if s.status == "done"]
    go, rb = switches[-2], switches[-1]
    shadow_log = {r["transaction_id"]: r for r in shadow_c.applied_transactions()}
    live_log = {r["transaction_id"]: r for r in live_c.applied_transactions()}
    for event in in_scope:
        # Every in-scope event applied exactly once, on the side the path wrote when it came.
        in_shadow, in_live = event.transaction_id in shadow_log, event.transaction_id in live_log
        assert in_shadow != in_live, event.transaction_id
        if in_live:
            applied = live_log[event.transaction_id]["applied_at"]
            # After go-live took over; before the rollback's copy (in-flight work finishes before workers pause).
            assert go.completed_at.isoformat() <= applied.replace("Z", "+00:00") <= rb.completed_at.isoformat()
    assert any(e.transaction_id in live_log for e in in_scope), "nothing was applied while live"
    # After the rollback: the shadow carries the path on; the batch sync made the live MES the ERP's copy.
    erp_now = erp.stock_as_of(None, include_zero=True)
    columns = ("material", "location", "unit", "quantity", "material_type")
    wanted = {
        (m, loc, u): Decimal(q)
        for m, loc, u, q, t in zip(*(erp_now[c] for c in columns), strict=True)
        if t in ("mro", "packaging")
    }
    held = {(r.material_number, r.location, r.unit): r.quantity for r in shadow_c.stock()}
    assert {k: held.get(k, Decimal(0)) for k in wanted} == wanted
    erp.dispose()

    with pytest.raises(SwitchRefused, match="already shadow"):
        switch_to(settings, "shadow")


def test_the_batch_sync_copies_erp_stock_once_and_only_outside_the_scope_once_live(
    settings, mes, monkeypatch, tmp_path
):
    from invsync_pipeline.cutover.batch_sync import run_batch_sync
    from invsync_pipeline.reference.shadow_period import _Plant

    period = ShadowPeriod(days=1, widen_day=None)
    settings = _configure(settings, monkeypatch, tmp_path, mes.url, _cutover_dict(period))
    plant = _Plant(period)
    erp = _erp_knowing(settings, plant.materials)
    for event in plant.opening(period.start):
        erp.post(event)
    at = period.start + timedelta(hours=2)
    live_mes = mes_client_for(settings, "live")
    first = run_batch_sync(settings, live_mes, erp, at)
    assert first["mode"] == "shadow" and first["posted"] == first["compared"] == len(plant.stock)
    assert run_batch_sync(settings, live_mes, erp, at)["posted"] == 0  # the same run again writes nothing twice
    live = {(r.material_number, r.location): r.quantity for r in mes_client_for(settings, "live").stock()}
    assert live == {key: Decimal(q) for key, q in plant.stock.items()}

    with CutoverState(settings) as state:  # as if go-live had happened
        seq = state.begin("live", "test").seq
        state.complete(seq, 0)
    later = run_batch_sync(settings, live_mes, erp, at + timedelta(hours=2))
    assert later["material_types"] == ["raw", "wip", "finished"]
    erp.dispose()


def test_in_shadow_mode_the_worker_writes_the_shadow_mes_skips_types_out_of_scope_and_applies_mes_backflushes(
    settings, topology, mes, monkeypatch, tmp_path
):
    from invsync_pipeline.contract import parse_event
    from invsync_pipeline.messaging.outbox import Outbox
    from invsync_pipeline_tests.factories import event

    period = ShadowPeriod(days=1, widen_day=None)
    settings = _configure(settings, monkeypatch, tmp_path, mes.url, _cutover_dict(period))
    ts = (period.start + timedelta(hours=10)).isoformat().replace("+00:00", "Z")
    events = [
        parse_event(event(transaction_id="S-MRO", material_type="mro", unit="EA", location="WH01/MR01", timestamp=ts)),
        parse_event(event(transaction_id="S-RAW", material_type="raw", timestamp=ts)),
        parse_event(
            event(
                transaction_id="S-MES",
                material_type="packaging",
                unit="EA",
                location="WH01/PK01",
                source_system="MES",
                timestamp=ts,
            )
        ),  # fmt: skip
    ]
    with Outbox(settings) as outbox:
        outbox.enqueue(events)
        outbox.flush_until_empty(30)
    worker = BackgroundWorker(settings, mes_client_for(settings, "live")).start()
    try:
        worker.wait_for(3, 30)
    finally:
        worker.stop()
    shadow = {r["transaction_id"] for r in mes_client_for(settings, "shadow").applied_transactions()}
    live = {r["transaction_id"] for r in mes_client_for(settings, "live").applied_transactions()}
    assert shadow == {"S-MRO", "S-MES"} and live == set()


def test_go_live_is_refused_until_the_gate_passes(settings, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from invsync_pipeline.cli import main

    _configure(settings, monkeypatch, tmp_path, "http://127.0.0.1:9", _cutover_dict(ShadowPeriod()))
    result = CliRunner().invoke(main, ["cutover", "go-live"])
    assert result.exit_code == 1
    assert "not going live" in result.output and "materialize cutover_comparison" in result.output
    status = CliRunner().invoke(main, ["cutover", "status"])
    assert status.exit_code == 0 and "event-driven path: shadow" in status.output


def test_live_mes_bookings_the_shadow_had_not_applied_survive_the_go_live_copy(
    settings, topology, mes, monkeypatch, tmp_path
):
    """Backflushes booked in the live MES that the shadow had not applied when go-live copied it
    (still queued, or booked after the workers paused) are put back once, and only those: not one
    the shadow applied, nor one a seed carried into the shadow, nor one booked after go-live."""
    from invsync_pipeline.contract import parse_event
    from invsync_pipeline.messaging.outbox import Outbox
    from invsync_pipeline_tests.factories import event

    settings = _configure(settings, monkeypatch, tmp_path, mes.url, _cutover_dict(ShadowPeriod(days=1)))
    live_c, shadow_c = mes_client_for(settings, "live"), mes_client_for(settings, "shadow")
    key = {"material_number": "PK-1", "material_type": "packaging", "unit": "EA", "location": "WH01/PK01"}
    _erp_knowing(settings, [("PK-1", "packaging")]).dispose()  # go-live copies the types the ERP knows
    count = {"transaction_type": "cycle_count", "reason": "physical_inventory", "movement_type": None}
    start = ShadowPeriod(days=1).start.isoformat().replace("+00:00", "Z")
    opening = parse_event(event(transaction_id="OPEN", quantity="100", timestamp=start,
                                **count, **key))  # fmt: skip
    live_c.post_transaction(opening)
    shadow_c.post_transaction(opening)

    def book(tx: str, quantity: str, publish: bool = True):
        """A backflush booked in the live MES, then published by it, as the reference MES does."""
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        backflush = {"transaction_type": "issue", "reason": "production_consumption", "movement_type": "261"}
        booked = parse_event(event(transaction_id=tx, source_system="MES", quantity=quantity, timestamp=now,
                                   **backflush, **key))  # fmt: skip
        live_c.post_transaction(booked)
        if publish:
            with Outbox(settings) as outbox:
                outbox.enqueue([booked])
                outbox.flush_until_empty(30)
        return booked

    def stock(client) -> Decimal:
        return {(r.material_number, r.location): r.quantity for r in client.stock()}[("PK-1", "WH01/PK01")]

    old = book("BF-OLD", "4", publish=False)  # its message is held up (parked, say) ...
    seeded_at = datetime.now(UTC)  # ... and a seed of the shadow carries its effect
    shadow_c.post_transaction(parse_event(event(transaction_id="SEED-1", quantity="96",
                                                timestamp=seeded_at.isoformat(), **count, **key)))  # fmt: skip
    with CutoverState(settings) as state:
        state.record_seed("shadow", seeded_at, ("packaging",), "test")
    worker = BackgroundWorker(settings, live_c).start()
    book("BF-APPLIED", "5")  # the shadow applies it before go-live: the copy carries it
    worker.wait_for(1, 30)
    worker.stop()
    queued = book("BF-QUEUED", "7")  # still in the queue at go-live
    waited = CutoverState.wait_until_paused

    def pause_then_book(self, seq, timeout, alive_within=10.0):
        paused = waited(self, seq, timeout, alive_within)
        book("BF-PAUSED", "3")  # booked after the workers paused, before the copy
        return paused

    monkeypatch.setattr(CutoverState, "wait_until_paused", pause_then_book)
    switch_to(settings, "live", note="test go-live")
    assert (stock(shadow_c), stock(live_c)) == (Decimal(91), Decimal(91))  # the copy overwrote two bookings
    after = book("BF-AFTER", "2")  # booked once live: the path leaves it alone

    worker = BackgroundWorker(settings, live_c).start()
    worker.wait_for(3, 30)
    with Outbox(settings) as outbox:  # the held-up one comes at last; two others come again
        outbox.enqueue([old, queued, after])
        outbox.flush_until_empty(30)
    worker.wait_for(6, 30)
    worker.stop()

    assert stock(live_c) == Decimal(100 - 4 - 5 - 7 - 3 - 2)
    restores = [r for r in live_c.applied_transactions() if "-KEEP-" in r["transaction_id"]]
    assert sorted(Decimal(r["quantity"]) for r in restores) == [Decimal(-7), Decimal(-3)]
