"""The reference MES over real HTTP on an ephemeral port, driven through the pipeline's ReferenceMesClient."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_service import RunningMes, run_in_thread
from invsync_pipeline.sources.mes import MesAuthError, MesRejected, MesUnavailable
from invsync_pipeline_tests.factories import event

# A recent day: timestamps older than the contract's horizon (400 days) are refused, so a
# fixed date would make these tests fail as the calendar moves on.
DAY = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()

TOKEN = "test-token-not-a-secret"
A, B = "WH01/RM01", "WH01/RM02"


def ev(**overrides) -> InventoryEvent:
    return parse_event(event(**overrides))


def receipt(qty: str, location: str = A, ts: str = f"{DAY}T10:00:00Z", **kw) -> InventoryEvent:
    return ev(quantity=qty, location=location, timestamp=ts, **kw)


def issue(qty: str, location: str = A, ts: str = f"{DAY}T10:00:00Z", **kw) -> InventoryEvent:
    return ev(
        transaction_type="issue",
        reason="production_consumption",
        movement_type="261",
        quantity=qty,
        location=location,
        timestamp=ts,
        **kw,
    )


def transfer(qty: str, frm: str, to: str, ts: str = f"{DAY}T10:00:00Z") -> InventoryEvent:
    return ev(
        transaction_type="transfer",
        reason="stock_transfer",
        movement_type="311",
        quantity=qty,
        location=frm,
        to_location=to,
        timestamp=ts,
    )


def count(qty: str, location: str = A, ts: str = f"{DAY}T10:00:00Z") -> InventoryEvent:
    return ev(
        transaction_type="cycle_count",
        reason="physical_inventory",
        movement_type=None,
        quantity=qty,
        location=location,
        timestamp=ts,
    )


def adjust(qty: str, location: str = A, **kw) -> InventoryEvent:
    kw.setdefault("movement_type", None)
    return ev(transaction_type="adjustment", reason="correction", quantity=qty, location=location, **kw)


def balances(client: ReferenceMesClient, **kw) -> dict[tuple[str, str], Decimal]:
    return {(row.location, row.material_number): row.quantity for row in client.stock(**kw)}


@pytest.fixture
def published() -> list[InventoryEvent]:
    return []


@pytest.fixture
def mes(tmp_path, published) -> Iterator[RunningMes]:
    with run_in_thread(tmp_path / "mes.sqlite", TOKEN, publish=published.append) as running:
        yield running


@pytest.fixture
def client(mes) -> Iterator[ReferenceMesClient]:
    with ReferenceMesClient(mes.url, TOKEN, timeout_seconds=5, read_retries=1, page_size=1000) as c:
        yield c


def test_each_transaction_type_moves_stock_as_the_contract_says(client):
    for e in [receipt("10"), issue("3"), transfer("2", A, B), adjust("-1.5"), adjust("0.25", B, movement_type="701")]:
        assert client.post_transaction(e).status == "applied"
    assert balances(client) == {(A, "MAT-100"): Decimal("3.5"), (B, "MAT-100"): Decimal("2.25")}

    assert client.post_transaction(count("7")).status == "applied"
    assert client.post_transaction(issue("9", B)).status == "applied"  # negative stock is kept, not refused
    assert balances(client) == {(A, "MAT-100"): Decimal("7"), (B, "MAT-100"): Decimal("-6.75")}

    for_erp = adjust("5", source_system="RECON", target_system="ERP")
    for_mes = adjust("5", source_system="RECON", target_system="MES")
    assert client.post_transaction(for_erp).status == "not_applicable"
    assert client.post_transaction(for_mes).status == "applied"
    assert balances(client, location=A) == {(A, "MAT-100"): Decimal("12")}
    assert client.find_transaction(for_erp.transaction_id)["status"] == "not_applicable"


def test_stock_is_per_location_material_and_unit(client):
    client.post_transaction(receipt("4"))
    client.post_transaction(ev(quantity="6", location=A, unit="EA"))
    client.post_transaction(ev(quantity="1", location=A, material_number="MAT-200"))
    rows = {(r.material_number, r.unit): r.quantity for r in client.stock(location=A)}
    assert rows == {("MAT-100", "KG"): 4, ("MAT-100", "EA"): 6, ("MAT-200", "KG"): 1}
    assert [r.quantity for r in client.stock(material_number="MAT-200")] == [1]


def test_a_duplicate_post_is_applied_once_and_returns_the_original_mes_id(client):
    e = receipt("10")
    first = client.post_transaction(e)
    again = client.post_transaction(e)
    # The same movement sent from another offset and with trailing zeros is still the same movement.
    same = parse_event({**e.to_message(), "timestamp": f"{DAY}T11:00:00+01:00", "quantity": "10.000"})
    third = client.post_transaction(same)
    assert first.status == "applied" and again.status == third.status == "duplicate"
    assert first.mes_transaction_id == again.mes_transaction_id == third.mes_transaction_id
    assert balances(client) == {(A, "MAT-100"): Decimal("10")}
    assert len(list(client.applied_transactions())) == 1


def test_a_reused_transaction_id_with_a_different_event_is_rejected(client):
    first = receipt("10")
    client.post_transaction(first)
    with pytest.raises(MesRejected) as exc:
        client.post_transaction(parse_event({**first.to_message(), "quantity": "11"}))
    assert exc.value.status == 409 and exc.value.field == "transaction_id"
    assert balances(client) == {(A, "MAT-100"): Decimal("10")}


def test_concurrent_posts_apply_each_transaction_exactly_once(client):
    same = receipt("5")
    distinct = [receipt("1") for _ in range(40)]
    start = threading.Barrier(16)

    def post(e: InventoryEvent):
        if e is same:
            start.wait(timeout=5)
        return client.post_transaction(e)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, [same] * 16 + distinct))
    same_results = results[:16]
    assert sorted(r.status for r in same_results) == ["applied"] + ["duplicate"] * 15
    assert len({r.mes_transaction_id for r in same_results}) == 1
    assert all(r.status == "applied" for r in results[16:])
    assert balances(client) == {(A, "MAT-100"): Decimal("45")}  # no lost update either
    assert len(list(client.applied_transactions())) == 41


def test_an_invalid_event_is_rejected_naming_the_field(client):
    # model_construct skips validation: the only way to get a broken event past the client.
    bad = InventoryEvent.model_construct(**{**dict(receipt("1")), "quantity": Decimal("-5")})
    with pytest.raises(MesRejected) as exc:
        client.post_transaction(bad)
    assert exc.value.status == 422
    assert (exc.value.field, exc.value.value) == ("quantity", "-5")
    assert "must be > 0" in exc.value.rule and "quantity" in str(exc.value)
    assert not exc.value.retryable
    assert list(client.stock()) == []


def test_a_missing_or_wrong_token_is_an_auth_error_that_says_what_to_set(mes):
    for token in (None, "wrong"):
        with ReferenceMesClient(mes.url, token) as c, pytest.raises(MesAuthError) as exc:
            c.post_transaction(receipt("1"))
        assert exc.value.status == 401 and "INVSYNC_MES_TOKEN" in str(exc.value)
        assert "wrong" not in str(exc.value) and TOKEN not in str(exc.value)
    assert ReferenceMesClient(mes.url, None).health() == {"status": "ok"}  # health and the OpenAPI need no token
    assert requests.get(f"{mes.url}/openapi.json", timeout=5).status_code == 200


def test_stock_as_of_equals_the_stock_at_that_time(client):
    timeline = [
        receipt("100", ts=f"{DAY}T10:00:00Z"),
        issue("30", ts=f"{DAY}T10:10:00Z"),
        transfer("20", A, B, ts=f"{DAY}T10:20:00Z"),
        count("45", ts=f"{DAY}T10:30:00Z"),
        receipt("10", ts=f"{DAY}T10:40:00Z"),
        issue("5", B, ts=f"{DAY}T10:50:00Z"),
    ]
    for e in timeline:
        client.post_transaction(e)

    def replay(cut: datetime) -> dict[tuple[str, str], Decimal]:
        stock: dict[tuple[str, str], Decimal] = {}
        for e in (e for e in timeline if e.timestamp < cut):
            here, there = (e.location, e.material_number), (e.to_location, e.material_number)
            if e.transaction_type == "cycle_count":
                stock[here] = e.quantity
            else:
                sign = 1 if e.transaction_type == "receipt" else -1
                stock[here] = stock.get(here, Decimal(0)) + sign * e.quantity
            if e.to_location:
                stock[there] = stock.get(there, Decimal(0)) + e.quantity
        return stock

    for cut in ["09:59:59", "10:00:00", "10:15:00", "10:20:00", "10:35:00", "10:45:00", "11:00:00"]:
        at = datetime.fromisoformat(f"{DAY}T{cut}+00:00")
        assert balances(client, as_of=at) == replay(at), cut
    assert balances(client, as_of=f"{DAY}T11:35:00+01:00") == {(A, "MAT-100"): 45, (B, "MAT-100"): 20}
    assert balances(client, as_of=datetime(2030, 1, 1, tzinfo=UTC)) == balances(client)


def test_pagination_returns_every_row_exactly_once(mes):
    with ReferenceMesClient(mes.url, TOKEN, page_size=4) as c:
        for n in range(23):
            c.post_transaction(receipt("1", location=f"WH{n % 3}/L{n:02d}", material_number=f"M{n % 5}"))
        for kw in ({}, {"as_of": f"{DAY}T12:00:00Z"}):
            keys = [(r.location, r.material_number, r.unit) for r in c.stock(**kw)]
            assert len(keys) == len(set(keys)) == 23 and keys == sorted(keys)
        assert len([r for r in c.stock(warehouse="WH1")]) == 8
        log = [t["transaction_id"] for t in c.applied_transactions()]
        assert len(log) == len(set(log)) == 23
    answer = requests.get(
        f"{mes.url}/api/v1/inventory/stock",
        params={"page_token": "garbage"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 400 and answer.json()["field"] == "page_token"


def test_applied_log_is_in_applied_order_and_filters_by_applied_at(client):
    events = [receipt("1"), issue("1"), receipt("2")]
    for e in events:
        client.post_transaction(e)
        time.sleep(0.002)  # distinct applied_at stamps
    log = list(client.applied_transactions())
    assert [t["transaction_id"] for t in log] == [e.transaction_id for e in events]
    assert [t["mes_transaction_id"] for t in log] == sorted(t["mes_transaction_id"] for t in log)
    assert log[1]["movements"] == [
        {"location": A, "material_number": "MAT-100", "unit": "KG", "before": "1", "after": "0"}
    ]
    assert parse_event({k: v for k, v in log[1].items() if k in InventoryEvent.model_fields}) == events[1]

    since = log[1]["applied_at"]
    assert [t["transaction_id"] for t in client.applied_transactions(since=since)] == [
        e.transaction_id for e in events[1:]
    ]
    assert [t["transaction_id"] for t in client.applied_transactions(until=since)] == [events[0].transaction_id]
    assert list(client.applied_transactions(since=datetime.now(UTC) + timedelta(hours=1))) == []


def test_backflush_applies_an_issue_and_publishes_a_valid_mes_event(client, published):
    client.post_transaction(receipt("10", material_type="wip"))
    result = client.backflush("MAT-100", "wip", A, "4", "KG", order="PO-1001")
    assert result.status == "applied" and result.published
    assert published == [result.event]
    e = parse_event(published[0].to_body())
    assert (e.source_system, e.transaction_type, e.reason, e.movement_type) == (
        "MES",
        "issue",
        "production_consumption",
        "261",
    )
    assert e.erp_reference == "PO-1001" and e.transaction_id.startswith("MES-BF-")
    assert balances(client) == {(A, "MAT-100"): Decimal("6")}

    again = client.backflush("MAT-100", "wip", A, "4", "KG", order="PO-1001", transaction_id="BF-7")
    retry = client.backflush("MAT-100", "wip", A, "4", "KG", order="PO-1001", transaction_id="BF-7")
    assert (again.status, retry.status) == ("applied", "duplicate") and retry.published
    assert retry.mes_transaction_id == again.mes_transaction_id and len(published) == 2
    assert balances(client) == {(A, "MAT-100"): Decimal("2")}
    assert client.unpublished() == []
    with pytest.raises(MesRejected) as exc:
        client.backflush("MAT-100", "wip", A, "4", "KG", order="")
    assert exc.value.field == "order"


def test_backflush_without_a_working_publisher_waits_in_the_unpublished_list(tmp_path):
    def broken(event: InventoryEvent) -> None:
        raise ConnectionError("broker down")

    for publish, error in ((None, None), (broken, "ConnectionError: broker down")):
        with run_in_thread(tmp_path / f"mes-{error is None}.sqlite", TOKEN, publish=publish) as mes:
            c = ReferenceMesClient(mes.url, TOKEN)
            result = c.backflush("MAT-9", "wip", A, "1", "EA", order="PO-2")
            assert not result.published
            [waiting] = c.unpublished()
            assert waiting["event"] == result.event.to_message() and waiting["last_error"] == error


def test_error_rate_fails_requests_without_applying_anything(client):
    client.set_faults(error_rate=1.0)
    with pytest.raises(MesUnavailable) as exc:
        client.post_transaction(receipt("3"))
    assert exc.value.status == 500 and exc.value.retryable
    with pytest.raises(MesUnavailable):
        list(client.stock())
    assert client.set_faults(error_rate=0)["error_rate"] == 0
    assert list(client.applied_transactions()) == [] and list(client.stock()) == []
    assert client.post_transaction(receipt("3")).status == "applied"


def test_an_outage_answers_503_and_the_client_raises_unavailable(client):
    client.set_faults(outage=True)
    with pytest.raises(MesUnavailable) as exc:
        client.post_transaction(receipt("1"))
    assert exc.value.status == 503 and "try again later" in str(exc.value)
    with pytest.raises(MesUnavailable):
        client.health()
    client.set_faults(outage=False)

    now = datetime.now(UTC)
    window = {"start": (now - timedelta(minutes=1)).isoformat(), "end": (now + timedelta(minutes=1)).isoformat()}
    client.set_faults(outage_windows=[window])
    with pytest.raises(MesUnavailable):
        list(client.stock())  # GETs are retried (read_retries=1) and still fail
    past = {"start": (now - timedelta(hours=2)).isoformat(), "end": (now - timedelta(hours=1)).isoformat()}
    client.set_faults(outage_windows=[past])
    assert client.post_transaction(receipt("1")).status == "applied"


def test_latency_is_added_and_a_timed_out_post_may_still_apply(client, mes):
    client.set_faults(latency_ms=300)
    started = time.monotonic()
    client.post_transaction(receipt("1"))
    assert time.monotonic() - started >= 0.3

    late = receipt("2")
    with ReferenceMesClient(mes.url, TOKEN, timeout_seconds=0.1) as impatient, pytest.raises(MesUnavailable) as exc:
        impatient.post_transaction(late)
    assert "timed out" in str(exc.value)
    client.set_faults(latency_ms=0)
    time.sleep(0.4)
    # The MES applied it after the client gave up: posting it again is a duplicate, not a second apply.
    assert client.find_transaction(late.transaction_id)["status"] == "applied"
    assert client.post_transaction(late).status == "duplicate"


def test_bad_fault_settings_are_rejected(client):
    with pytest.raises(MesRejected) as exc:
        client.set_faults(error_rate=1.5)
    assert exc.value.field == "error_rate"


def test_openapi_describes_every_route(mes):
    doc = requests.get(f"{mes.url}/openapi.json", timeout=5).json()
    assert doc["openapi"].startswith("3.1")
    served = {(route.path, method.lower()) for route in mes.app.routes for method in route.methods - {"HEAD"}}
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    # Namespaced twins (/ns/{namespace}/api/...) are described once, through the second server entry.
    namespaced = {(p.removeprefix("/ns/{namespace}"), m) for p, m in served if p.startswith("/ns/{namespace}/")}
    assert namespaced and namespaced <= described
    assert {"url": "/ns/{namespace}", "variables": {"namespace": {"default": "shadow"}}} in doc["servers"]
    assert served - {(f"/ns/{{namespace}}{p}", m) for p, m in namespaced} == described
    for schema in doc["components"]["schemas"].values():
        assert "$schema" not in schema


def test_cli_shows_stock_and_sets_faults(mes, client, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from invsync_pipeline.cli import main

    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INVSYNC_MES_URL", mes.url)
    monkeypatch.setenv("INVSYNC_MES_TOKEN", TOKEN)
    client.post_transaction(receipt("12.5"))
    runner = CliRunner()
    shown = runner.invoke(main, ["mes", "stock", "--location", A])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[1].split() == [A, "MAT-100", "KG", "12.5"]
    changed = runner.invoke(main, ["mes", "faults", "--latency-ms", "5", "--outage"])
    assert changed.exit_code == 0 and '"latency_ms": 5' in changed.output
    assert client.get_faults()["outage"] is True
    failed = runner.invoke(main, ["mes", "stock"])
    assert failed.exit_code == 1 and "503" in failed.output

    monkeypatch.delenv("INVSYNC_MES_TOKEN")
    refused = runner.invoke(main, ["mes", "serve", "--port", "0"])
    assert refused.exit_code != 0 and "INVSYNC_MES_TOKEN is not set" in refused.output


def test_a_namespace_is_a_separate_dataset_with_the_same_api(mes, client):
    shadow = ReferenceMesClient(f"{mes.url}/ns/shadow", TOKEN)
    event = receipt("7", transaction_id="NS-1", material_number="MAT-NS")
    assert shadow.post_transaction(event).status == "applied"
    assert client.find_transaction("NS-1") is None  # the live dataset never saw it
    assert [r.quantity for r in shadow.stock(material_number=event.material_number)] == [Decimal("7")]
    assert shadow.post_transaction(event).status == "duplicate"
    bad = ReferenceMesClient(f"{mes.url}/ns/Not_OK", TOKEN)
    with pytest.raises(MesRejected) as exc:
        list(bad.stock())
    assert exc.value.field == "namespace"


# --- the batch endpoint --------------------------------------------------------------------------
def test_a_batch_answers_each_event_in_order_and_is_idempotent_per_transaction_id(client, mes):
    first, second = receipt("2"), receipt("3", location=B)
    clash = parse_event({**first.to_message(), "quantity": "9"})  # first's id, another movement
    client.set_faults(locked_locations=["WH01/RM07"])
    counted = receipt("4", location="WH01/RM07")

    outcomes = client.post_transactions([first, second, first, clash, counted])

    assert [getattr(o, "status", None) for o in outcomes[:3]] == ["applied", "applied", "duplicate"]
    assert outcomes[0].mes_transaction_id == outcomes[2].mes_transaction_id
    assert isinstance(outcomes[3], MesRejected) and outcomes[3].status == 409
    assert outcomes[3].field == "transaction_id"
    assert isinstance(outcomes[4], MesUnavailable) and outcomes[4].status == 503  # try it again later
    assert "physical count" in str(outcomes[4])
    # The whole batch again changes nothing; the counted location takes its movement once unlocked.
    client.set_faults(locked_locations=[])
    again = client.post_transactions([first, second, counted])
    assert [o.status for o in again] == ["duplicate", "duplicate", "applied"]
    assert balances(client) == {(A, "MAT-100"): Decimal(2), (B, "MAT-100"): Decimal(3),
                                ("WH01/RM07", "MAT-100"): Decimal(4)}  # fmt: skip


def test_a_batch_line_that_breaks_the_contract_is_refused_alone(client, mes):
    good = receipt("5")
    lines = b"\n".join([good.to_body(), b'{"transaction_id": "X", "quantity": "1e999999"}', b"[" * 100])
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    response = requests.post(f"{mes.url}/api/v1/inventory/transactions/batch", data=lines, headers=headers, timeout=10)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["http_status"] for r in results] == [201, 422, 422]
    assert all(r["field"] and r["rule"] for r in results[1:])
    assert balances(client) == {(A, "MAT-100"): Decimal(5)}


def test_a_batch_is_one_database_transaction(client, mes):
    """Readers never see part of a batch: every stock total read while batches of 50 receipts
    land is a whole number of batches."""
    seen: list[Decimal] = []
    done = threading.Event()

    def read() -> None:
        with ReferenceMesClient(mes.url, TOKEN, timeout_seconds=5) as reader:
            while not done.is_set():
                seen.append(sum((r.quantity for r in reader.stock()), Decimal(0)))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    for _ in range(10):
        client.post_transactions([receipt("1", material_number=f"MAT-{i}") for i in range(50)])
    done.set()
    thread.join(10)
    assert seen and all(total % 50 == 0 for total in seen)
    assert balances(client) and sum(balances(client).values()) == 500
