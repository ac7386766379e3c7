"""The ERP source on SQLite and PostgreSQL: SAP postings, idempotency, stock as of any instant, movements as events.

Every test runs on a SQLite file under tmp_path and on the local PostgreSQL in a schema of its own
(dropped afterwards). A PostgreSQL that is not running fails the test with how to start it.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.settings import ConfigError
from invsync_pipeline.sources.erp import ErpDatabase, ErpPostingError
from invsync_pipeline_tests import factories

PG_URL = os.environ.get("INVSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
# A recent morning: older postings would fall outside the contract's horizon one day.
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=8, minute=0, second=0, microsecond=0)

CUSTOM_MAPPING = {
    "materials": {"__table__": "zmat", "material": "material_no", "material_type": "mat_kind"},
    "stock": {"__table__": "zstock", "quantity": "qty_unrestricted", "storage_location": "bin"},
    "documents": {"__table__": "zmoves", "entry_timestamp": "entered_at_utc", "quantity": "qty", "item": "line"},
    "postings": {"__table__": "zposted"},
    "number_ranges": {"__table__": "znumbers"},
}


def _open(kind: str, tmp_path, mapping=None, name: str = "erp") -> ErpDatabase:
    if kind == "sqlite":
        return ErpDatabase(f"sqlite:///{tmp_path / f'{name}.sqlite'}", mapping, prefix="t_")
    db = ErpDatabase(PG_URL, mapping, schema=f"erp_test_{uuid.uuid4().hex[:12]}")
    reason = None
    try:
        with db.engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
    if reason:
        db.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({reason}).\nStart it with: {PG_START}", pytrace=False)
    return db


def _close(db: ErpDatabase) -> None:
    if db.dialect == "postgresql":
        with db.engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
    else:
        db.drop_schema()
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def erp(request, tmp_path) -> Iterator[ErpDatabase]:
    db = _open(request.param, tmp_path)
    db.create_schema()
    yield db
    _close(db)


def ev(**overrides) -> InventoryEvent:
    """A contract event (a 10 KG purchase receipt of MAT-100 at WH01/RM01 unless overridden)."""
    return parse_event(factories.event(**{"movement_type": None, **overrides}))


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def stock(db: ErpDatabase, ts: datetime | None = None, **kw) -> dict[tuple[str, str], Decimal]:
    frame = db.stock_as_of(ts, **kw)
    return {(r.material, r.location): r.quantity for r in frame.itertuples()}


def document_count(db: ErpDatabase) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.tables.documents)).scalar_one()


def movement_codes(doc) -> list[tuple[str, str, str, Decimal]]:
    return [(i.movement_type, i.debit_credit, i.location, i.quantity) for i in doc.items]


def test_each_movement_kind_writes_its_sap_movement_type_and_updates_stock(erp):
    cases = [
        (dict(quantity="100", reason="purchase_receipt"), "101", "S", Decimal(100)),
        (dict(quantity="5", reason="production_receipt"), "101", "S", Decimal(105)),
        (dict(quantity="7", transaction_type="issue", reason="production_consumption"), "261", "H", Decimal(98)),
        (dict(quantity="8", transaction_type="issue", reason="shipment"), "601", "H", Decimal(90)),
        (dict(quantity="0.5", transaction_type="issue", reason="scrap"), "551", "H", Decimal("89.5")),
        (dict(quantity="1.5", transaction_type="issue", reason="return"), "122", "H", Decimal(88)),
        (dict(quantity="3", transaction_type="adjustment", reason="correction"), "701", "S", Decimal(91)),
        (dict(quantity="-2", transaction_type="adjustment", reason="correction"), "702", "H", Decimal(89)),
        (dict(quantity="4", transaction_type="issue", reason="purchase_receipt", movement_type="102"), "102", "H",
         Decimal(85)),
    ]  # fmt: skip
    for n, (fields, code, side, expected) in enumerate(cases):
        doc = erp.post(ev(timestamp=at(n), **fields))
        assert doc.created and len(doc.document_number) == 10
        assert [(i.movement_type, i.debit_credit) for i in doc.items] == [(code, side)], fields
        assert all(i.quantity > 0 for i in doc.items)
        assert stock(erp) == {("MAT-100", "WH01/RM01"): expected}, fields


def test_posting_the_same_transaction_id_twice_changes_nothing(erp):
    first = erp.post(ev(transaction_id="TX-ONCE", quantity="10"))
    before, docs = stock(erp), document_count(erp)
    again = erp.post(ev(transaction_id="TX-ONCE", quantity="999", transaction_type="issue", reason="shipment"))
    assert not again.created
    assert again.document_number == first.document_number
    assert movement_codes(again) == movement_codes(first)
    assert stock(erp) == before == {("MAT-100", "WH01/RM01"): Decimal(10)}
    assert document_count(erp) == docs == 1
    assert erp.posting("TX-ONCE").document_number == first.document_number
    assert erp.posting("TX-NEVER") is None


def test_a_transfer_is_two_items_leaving_the_source_and_arriving_at_the_destination(erp):
    erp.post(ev(quantity="20"))
    doc = erp.post(ev(transaction_type="transfer", reason="stock_transfer", quantity="6", to_location="WH01/FG01"))
    assert movement_codes(doc) == [("311", "H", "WH01/RM01", Decimal(6)), ("311", "S", "WH01/FG01", Decimal(6))]
    assert [i.item for i in doc.items] == [1, 2]
    assert stock(erp) == {("MAT-100", "WH01/RM01"): Decimal(14), ("MAT-100", "WH01/FG01"): Decimal(6)}


def test_a_cycle_count_posts_only_the_difference_to_book_stock(erp):
    erp.post(ev(quantity="50"))
    count = dict(transaction_type="cycle_count", reason="physical_inventory")
    gain = erp.post(ev(quantity="53.25", **count))
    assert movement_codes(gain) == [("701", "S", "WH01/RM01", Decimal("3.25"))]
    loss = erp.post(ev(quantity="40", **count))
    assert movement_codes(loss) == [("702", "H", "WH01/RM01", Decimal("13.25"))]
    agree = erp.post(ev(transaction_id="TX-COUNT-OK", quantity="40", **count))
    assert agree.created and agree.document_number is None and agree.items == ()
    assert document_count(erp) == 3
    # The count that agreed is remembered: replaying it after stock moved must not post a difference.
    erp.post(ev(quantity="5"))
    assert not erp.post(ev(transaction_id="TX-COUNT-OK", quantity="40", **count)).created
    assert stock(erp) == {("MAT-100", "WH01/RM01"): Decimal(45)}
    empty = erp.post(ev(location="WH01/RM09", quantity="2", **count))  # a count where no stock row exists yet
    assert movement_codes(empty) == [("701", "S", "WH01/RM09", Decimal(2))]


SCRIPT = [  # (minute, overrides) of a small hour at a plant, hand-computed below
    (0, dict(quantity="100")),
    (10, dict(quantity="30", transaction_type="issue", reason="production_consumption")),
    (20, dict(quantity="25", transaction_type="transfer", reason="stock_transfer", to_location="WH01/FG01")),
    (30, dict(material_number="MAT-200", material_type="finished", unit="EA", quantity="12",
              reason="production_receipt", location="WH02/FG01")),
    (40, dict(quantity="44.5", transaction_type="cycle_count", reason="physical_inventory")),
    (60, dict(quantity="0.25", transaction_type="adjustment", reason="correction", location="WH01/FG01")),
    (60, dict(material_number="MAT-200", material_type="finished", unit="EA", quantity="2",
              transaction_type="issue", reason="shipment", location="WH02/FG01")),
]  # fmt: skip
RM, FG, M2 = ("MAT-100", "WH01/RM01"), ("MAT-100", "WH01/FG01"), ("MAT-200", "WH02/FG01")
EXPECTED = [  # stock at the start of each minute, as SAP's MB5B would report it
    (-1, {}),
    (0, {}),
    (5, {RM: Decimal(100)}),
    (10, {RM: Decimal(100)}),
    (15, {RM: Decimal(70)}),
    (25, {RM: Decimal(45), FG: Decimal(25)}),
    (35, {RM: Decimal(45), FG: Decimal(25), M2: Decimal(12)}),
    (45, {RM: Decimal("44.5"), FG: Decimal(25), M2: Decimal(12)}),
    (60, {RM: Decimal("44.5"), FG: Decimal(25), M2: Decimal(12)}),
    (61, {RM: Decimal("44.5"), FG: Decimal("25.25"), M2: Decimal(10)}),
]


def _post_script(db: ErpDatabase) -> None:
    for n, (minute, fields) in enumerate(SCRIPT):
        db.post(ev(transaction_id=f"TX-SCRIPT-{n}", timestamp=at(minute), **fields))


def test_stock_as_of_equals_hand_computed_stock_at_every_instant(erp):
    _post_script(erp)
    for minute, expected in EXPECTED:
        assert stock(erp, T0 + timedelta(minutes=minute)) == expected, f"as of minute {minute}"
    assert stock(erp) == EXPECTED[-1][1]
    assert stock(erp, T0 + timedelta(minutes=35), plant="WH02") == {M2: Decimal(12)}
    zero = erp.stock_as_of(T0 + timedelta(minutes=5), include_zero=True)
    assert len(zero) == 3 and set(zero.loc[zero.material == "MAT-200", "quantity"]) == {Decimal(0)}
    frame = erp.stock_as_of(T0 + timedelta(minutes=35))
    assert list(frame.columns) == ["material", "material_type", "plant", "storage_location", "location", "unit",
                                   "quantity"]  # fmt: skip
    assert dict(zip(frame.material, frame.material_type, strict=True)) == {"MAT-100": "raw", "MAT-200": "finished"}
    assert set(frame.unit) == {"KG", "EA"}
    # The hour-partition identity: begin + movements in [start, end) == end.
    start, end = T0, T0 + timedelta(minutes=60)
    moved = sum(_signed_effects(erp.movements(start, end)).values(), start=Decimal(0))
    assert sum(stock(erp, start).values(), start=Decimal(0)) + moved == sum(stock(erp, end).values())
    with pytest.raises(ValueError, match="timezone-aware"):
        erp.stock_as_of(datetime(2026, 11, 24, 8, 0))


def test_stock_as_of_is_the_same_on_sqlite_and_postgresql(tmp_path):
    dbs = [_open("sqlite", tmp_path), _open("postgresql", tmp_path)]
    try:
        for db in dbs:
            db.create_schema()
            _post_script(db)
        for minute in (-1, 7, 10, 33.3333, 40, 59.999, 60, 120):
            ts = T0 + timedelta(minutes=minute)
            lite, pg = (db.stock_as_of(ts, include_zero=True) for db in dbs)
            assert lite.to_dict("records") == pg.to_dict("records"), f"as of minute {minute}"
        window = (T0, T0 + timedelta(hours=2))
        lite_events, pg_events = ([e.to_message() for e in db.movements(*window)] for db in dbs)
        assert lite_events == pg_events and len(lite_events) == len(SCRIPT)
    finally:
        for db in dbs:
            _close(db)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_custom_table_and_column_mapping_works_end_to_end(kind, tmp_path):
    db = _open(kind, tmp_path, CUSTOM_MAPPING)
    try:
        db.create_schema()
        _post_script(db)
        names = set(sa.inspect(db.engine).get_table_names(schema=db.schema))
        prefix = "t_" if kind == "sqlite" else ""
        assert {f"{prefix}{n}" for n in ("zmat", "zstock", "zmoves", "zposted", "znumbers")} <= names
        assert not names & {f"{prefix}{n}" for n in ("mara", "mard", "matdoc", "nriv")}
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns(f"{prefix}zmoves", schema=db.schema)}
        assert {"entered_at_utc", "qty", "line", "bwart", "shkzg"} <= columns
        for minute, expected in EXPECTED:
            assert stock(db, T0 + timedelta(minutes=minute)) == expected, f"as of minute {minute}"
        events = db.movements(T0, T0 + timedelta(hours=2))
        assert [e.transaction_type for e in events] == ["receipt", "issue", "transfer", "receipt", "adjustment",
                                                        "adjustment", "issue"]  # fmt: skip
    finally:
        _close(db)


def test_a_replica_without_invsync_columns_is_read_with_derived_ids_and_refuses_posting(erp, tmp_path):
    erp.post(ev(timestamp=at(0), quantity="10"))
    mapping = {"documents": {"transaction_id": "", "movement_indicator": "", "inventory_document": "",
                             "reference": ""}, "stock": {"unit": ""}}  # fmt: skip
    kind = {"sqlite": {"prefix": "t_"}, "postgresql": {"schema": erp.schema}}[erp.dialect]
    replica = ErpDatabase(erp.url.render_as_string(hide_password=False), mapping, **kind)
    try:
        [event] = replica.movements(T0, T0 + timedelta(hours=1))
        assert event.transaction_id.startswith(f"ERP-{T0.year}-49") and event.reason == "purchase_receipt"
        assert stock(replica) == {("MAT-100", "WH01/RM01"): Decimal(10)}
        assert set(replica.stock_as_of().unit) == {"KG"}  # from the material master
        with pytest.raises(ErpPostingError, match="read-only"):
            replica.post(ev())
    finally:
        replica.dispose()


def test_an_unknown_sap_material_type_names_the_config_key_that_maps_it(erp):
    erp.post(ev(quantity="1"))
    with erp.engine.begin() as conn:
        conn.execute(sa.update(erp.tables.materials).values(material_type="ZROH"))
    with pytest.raises(ConfigError, match=r'"mtart\.ZROH": raw'):
        erp.stock_as_of()
    kind = {"sqlite": {"prefix": "t_"}, "postgresql": {"schema": erp.schema}}[erp.dialect]
    mapped = ErpDatabase(erp.url.render_as_string(hide_password=False), {"materials": {"mtart.ZROH": "wip"}}, **kind)
    try:
        assert list(mapped.stock_as_of().material_type) == ["wip"]
    finally:
        mapped.dispose()


def test_concurrent_posters_get_unique_document_numbers_and_one_document_per_id(erp):
    threads, per_thread = 6, 12
    results: list = []
    errors: list[BaseException] = []

    def poster(n: int) -> None:
        try:
            for i in range(per_thread):
                loc = f"WH01/RM0{i % 3}"  # shared stock rows, so posters really contend
                results.append(erp.post(ev(transaction_id=f"TX-C{n}-{i}", quantity="1", location=loc)))
                # Every thread also races the others with the same id.
                results.append(erp.post(ev(transaction_id=f"TX-SHARED-{i}", quantity="1", location=loc)))
        except BaseException as exc:  # surfaced below; a thread must not die silently
            errors.append(exc)

    workers = [threading.Thread(target=poster, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    created = [r for r in results if r.created]
    numbers = [r.document_number for r in created]
    assert len(created) == threads * per_thread + per_thread
    assert len(set(numbers)) == len(numbers)
    assert sorted(int(n) for n in numbers) == list(range(4_900_000_000, 4_900_000_000 + len(numbers)))
    shared = {r.transaction_id: r.document_number for r in created if r.transaction_id.startswith("TX-SHARED")}
    assert all(r.document_number == shared[r.transaction_id] for r in results if r.transaction_id in shared)
    assert sum(stock(erp).values()) == len(created)
    assert document_count(erp) == len(created)


def test_movements_round_trip_to_contract_events(erp):
    _post_script(erp)
    erp.post(ev(timestamp=at(70), quantity="4", transaction_type="issue", reason="purchase_receipt",
                movement_type="102", transaction_id="TX-REVERSAL"))  # fmt: skip
    erp.post(ev(timestamp=at(71), quantity="3", transaction_type="receipt", reason="return", movement_type="262"))
    events = erp.movements(T0, T0 + timedelta(hours=2))
    for event in events:
        assert parse_event(event.to_body()) == event
        assert event.source_system == "ERP" and len(event.erp_reference) == 10
    summary = [(e.transaction_type, e.movement_type, e.reason, e.quantity, e.location, e.to_location)
               for e in events]  # fmt: skip
    assert summary == [
        ("receipt", "101", "purchase_receipt", Decimal("100.000000"), "WH01/RM01", None),
        ("issue", "261", "production_consumption", Decimal("30.000000"), "WH01/RM01", None),
        ("transfer", "311", "stock_transfer", Decimal("25.000000"), "WH01/RM01", "WH01/FG01"),
        ("receipt", "101", "production_receipt", Decimal("12.000000"), "WH02/FG01", None),
        ("adjustment", "702", "physical_inventory", Decimal("-0.500000"), "WH01/RM01", None),
        ("adjustment", "701", "correction", Decimal("0.250000"), "WH01/FG01", None),
        ("issue", "601", "shipment", Decimal("2.000000"), "WH02/FG01", None),
        ("issue", "102", "purchase_receipt", Decimal("4.000000"), "WH01/RM01", None),
        ("receipt", "262", "return", Decimal("3.000000"), "WH01/RM01", None),
    ]
    posted_ids = [e.transaction_id for e in events]
    assert len(set(posted_ids)) == len(posted_ids) and "TX-REVERSAL" in posted_ids
    assert events[0].timestamp == T0 and events[3].material_type == "finished"
    # Windows are half-open: the two postings at minute 60 belong to the next hour.
    assert len(erp.movements(T0, T0 + timedelta(minutes=60))) == 5
    assert len(erp.movements(T0 + timedelta(minutes=60), T0 + timedelta(minutes=61))) == 2
    assert len(erp.movements(T0, T0 + timedelta(hours=2), plant="WH02")) == 2


def _signed_effects(events: list[InventoryEvent]) -> dict[tuple[str, str], Decimal]:
    effect: dict[tuple[str, str], Decimal] = {}
    for e in events:
        sign = {"receipt": 1, "issue": -1, "adjustment": 1, "transfer": -1}[e.transaction_type]
        effect[(e.material_number, e.location)] = effect.get((e.material_number, e.location), 0) + sign * e.quantity
        if e.to_location:
            key = (e.material_number, e.to_location)
            effect[key] = effect.get(key, 0) + e.quantity
    return effect


def test_posting_in_another_unit_than_the_base_unit_is_refused_with_the_unit_to_use(erp):
    erp.post(ev(quantity="1", unit="KG"))
    with pytest.raises(ErpPostingError, match="convert the quantity to KG"):
        erp.post(ev(transaction_id="TX-EA", quantity="1", unit="EA"))
    assert erp.posting("TX-EA") is None  # refused postings leave no trace, so a fixed retry can post


def test_cli_inits_posts_a_jsonl_file_and_prints_stock_as_of(tmp_path, monkeypatch):
    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INVSYNC_ERP_URL", raising=False)
    lines = [
        parse_event(factories.event(transaction_id="TX-CLI-1", timestamp=at(0), quantity="10")).to_body().decode(),
        '{"schema_version": "1"}',
        parse_event(factories.event(transaction_id="TX-CLI-2", timestamp=at(30), quantity="2.5")).to_body().decode(),
        parse_event(factories.event(transaction_id="TX-CLI-1", timestamp=at(0), quantity="10")).to_body().decode(),
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    assert runner.invoke(main, ["erp", "init"]).exit_code == 0
    posted = runner.invoke(main, ["erp", "post", str(tmp_path / "events.jsonl")])
    assert posted.exit_code == 1
    assert "line 2: transaction_id=<missing>: is required" in posted.output
    assert "2 posted, 1 already posted, 1 refused" in posted.output
    now = runner.invoke(main, ["erp", "stock", "--plant", "WH01"])
    assert now.exit_code == 0 and "12.5" in now.output and "WH01/RM01" in now.output
    earlier = runner.invoke(main, ["erp", "stock", "--as-of", at(15)])
    assert earlier.exit_code == 0 and "10.0" in earlier.output and "12.5" not in earlier.output
    naive = runner.invoke(main, ["erp", "stock", "--as-of", "2026-11-24T08:00:00"])
    assert naive.exit_code == 2 and "add Z for UTC" in naive.output


def test_material_master_keeps_sap_type_cost_and_abc_class(erp):
    erp.upsert_material("MAT-300", "packaging", "EA", unit_cost=Decimal("2.5"), currency="EUR", abc_class="A")
    erp.upsert_material("MAT-300", "packaging", "EA", unit_cost=Decimal("2.75"))
    erp.post(ev(material_number="MAT-301", material_type="mro", unit="EA", quantity="1"))
    masters = {r.material: r for r in erp.materials().itertuples()}
    assert masters["MAT-300"].material_type == "packaging" and masters["MAT-300"].abc_class == "A"
    assert masters["MAT-300"].unit_cost == Decimal("2.75") and masters["MAT-300"].currency == "EUR"
    assert masters["MAT-301"].material_type == "mro" and masters["MAT-301"].base_unit == "EA"
    with erp.engine.connect() as conn:
        mtarts = dict(
            conn.execute(sa.select(erp.tables.materials.c.material, erp.tables.materials.c.material_type)).all()
        )
    assert mtarts == {"MAT-300": "VERP", "MAT-301": "ERSA"}
