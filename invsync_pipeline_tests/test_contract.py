"""Contract v1: every rule of the table in DESIGN.md accepts a good message and names a bad one.

A failing case checks the three things an operator reads in the parking queue: which field,
the offending value, and (through the message) the rule.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.contract import (
    DEFAULT_LIMITS,
    MOVEMENT_TYPES,
    ContractLimits,
    ContractViolation,
    InventoryEvent,
    MaterialType,
    Reason,
    SourceSystem,
    TransactionType,
    best_effort_fields,
    json_schema,
    parse_event,
    routing_key,
    try_parse_event,
)

DROP = object()  # as a field value: leave the field out of the message
# A recent day: timestamps must lie within the contract's horizon (400 days back by default),
# so a fixed date would start failing as the calendar moves on.
DAY = (datetime.now(UTC) - timedelta(days=3)).date()
Y, M, D = DAY.year, DAY.month, DAY.day

GOOD: dict[str, Any] = {
    "schema_version": "1",
    "transaction_id": "ERP-4900001234-0001",
    "timestamp": f"{DAY}T10:15:00Z",
    "source_system": "ERP",
    "material_number": "RM-100234",
    "material_type": "raw",
    "quantity": "25.5",
    "unit": "KG",
    "location": "WH01/RM01",
    "transaction_type": "receipt",
    "reason": "purchase_receipt",
    "erp_reference": "4900001234",
}

TRANSFER = {"transaction_type": "transfer", "reason": "stock_transfer", "to_location": "WH01/FG01"}
ADJUSTMENT = {"transaction_type": "adjustment", "reason": "correction"}
CYCLE_COUNT = {"transaction_type": "cycle_count", "reason": "physical_inventory"}
ISSUE = {"transaction_type": "issue", "reason": "production_consumption"}
RECON = {"source_system": "RECON", "target_system": "MES", **ADJUSTMENT, "quantity": "-2"}


def message(**changes: Any) -> dict[str, Any]:
    """The good receipt with some fields changed (or dropped with DROP)."""
    merged = {**GOOD, **changes}
    return {key: value for key, value in merged.items() if value is not DROP}


def body(**changes: Any) -> bytes:
    return json.dumps(message(**changes)).encode()


# --- one passing case per rule ----------------------------------------------------------------

PASSING = [
    pytest.param({}, id="the-good-receipt"),
    pytest.param({"transaction_id": "T"}, id="transaction_id-1-char"),
    pytest.param({"transaction_id": "x" * 64}, id="transaction_id-64-chars"),
    pytest.param({"timestamp": f"{DAY}T10:15:00Z"}, id="timestamp-Z"),
    pytest.param({"timestamp": f"{DAY}T10:15:00+01:00"}, id="timestamp-plus-offset"),
    pytest.param({"timestamp": f"{DAY}T10:15:00-05:30"}, id="timestamp-minus-offset"),
    pytest.param({"timestamp": f"{DAY}T10:15:00.123456Z"}, id="timestamp-fraction"),
    pytest.param({"source_system": "MES"}, id="source_system-MES"),
    pytest.param(RECON, id="source_system-RECON-with-target_system-MES"),
    pytest.param({**RECON, "target_system": "ERP"}, id="source_system-RECON-with-target_system-ERP"),
    pytest.param({"material_number": "M"}, id="material_number-1-char"),
    pytest.param({"material_number": "M" * 40}, id="material_number-40-chars"),
    *[pytest.param({"material_type": mt}, id=f"material_type-{mt}") for mt in get_args(MaterialType)],
    pytest.param({"quantity": "0.000001"}, id="receipt-smallest-positive"),
    pytest.param({"quantity": 25}, id="quantity-json-integer"),
    pytest.param({"quantity": 25.25}, id="quantity-json-number"),
    pytest.param({"quantity": "1.123456"}, id="quantity-6-decimals"),
    pytest.param({**ISSUE, "quantity": "3"}, id="issue-positive"),
    pytest.param({**TRANSFER, "quantity": 0.5}, id="transfer-positive"),
    pytest.param({**ADJUSTMENT, "quantity": "-3.5"}, id="adjustment-negative"),
    pytest.param({**ADJUSTMENT, "quantity": 4}, id="adjustment-positive"),
    pytest.param({**CYCLE_COUNT, "quantity": 0}, id="cycle_count-zero"),
    pytest.param({**CYCLE_COUNT, "quantity": "120"}, id="cycle_count-positive"),
    pytest.param({"unit": "EA"}, id="unit-EA"),
    pytest.param({"unit": "L"}, id="unit-L"),
    pytest.param({"unit": "M2"}, id="unit-M2"),
    pytest.param({"location": "WH02/FG-01"}, id="location-form"),
    pytest.param(TRANSFER, id="to_location-on-transfer"),
    pytest.param({**TRANSFER, "to_location": "WH02/RM01"}, id="to_location-other-warehouse"),
    *[
        pytest.param({"transaction_type": tt, **extra}, id=f"transaction_type-{tt}")
        for tt, extra in [
            ("receipt", {}),
            ("issue", {}),
            ("transfer", {"to_location": "WH01/FG01"}),
            ("adjustment", {}),
            ("cycle_count", {}),
        ]
    ],
    *[pytest.param({"reason": reason}, id=f"reason-{reason}") for reason in get_args(Reason)],
    pytest.param({"erp_reference": "MES-ORDER-77"}, id="erp_reference-MES-order"),
    pytest.param({"movement_type": DROP}, id="movement_type-absent"),
    pytest.param({"movement_type": "101"}, id="movement_type-101-receipt"),
    pytest.param({"movement_type": "501"}, id="movement_type-501-receipt"),
    pytest.param({"movement_type": "561"}, id="movement_type-561-receipt"),
    pytest.param({**ISSUE, "movement_type": "261"}, id="movement_type-261-issue"),
    pytest.param({**ISSUE, "reason": "shipment", "movement_type": "601"}, id="movement_type-601-issue"),
    pytest.param({**ISSUE, "reason": "shipment", "movement_type": "641"}, id="movement_type-641-issue"),
    pytest.param({**ISSUE, "reason": "scrap", "movement_type": "551"}, id="movement_type-551-issue"),
    pytest.param({**ISSUE, "reason": "return", "movement_type": "122"}, id="movement_type-122-issue"),
    pytest.param({**ISSUE, "reason": "return", "movement_type": "161"}, id="movement_type-161-issue"),
    pytest.param({**TRANSFER, "movement_type": "301"}, id="movement_type-301-transfer"),
    pytest.param({**TRANSFER, "movement_type": "311"}, id="movement_type-311-transfer"),
    pytest.param({**ISSUE, "movement_type": "102"}, id="reversal-102-is-issue"),
    pytest.param({"movement_type": "262"}, id="reversal-262-is-receipt"),
    pytest.param({"movement_type": "602"}, id="reversal-602-is-receipt"),
    pytest.param({**TRANSFER, "movement_type": "312"}, id="reversal-312-is-transfer"),
    pytest.param({**ADJUSTMENT, "movement_type": "701", "quantity": "5"}, id="movement_type-701-gain"),
    pytest.param({**ADJUSTMENT, "movement_type": "702", "quantity": "-5"}, id="movement_type-702-loss"),
    pytest.param({"target_system": DROP}, id="target_system-absent-for-ERP"),
]


@pytest.mark.parametrize("changes", PASSING)
def test_a_message_that_keeps_every_rule_is_accepted(changes):
    event = parse_event(body(**changes))

    assert isinstance(event, InventoryEvent)
    assert event.transaction_id == message(**changes)["transaction_id"]


# --- one failing case per rule: (changes, field, the value as the error shows it) -------------

FAILING = [
    pytest.param({"schema_version": "2"}, "schema_version", "'2'", id="schema_version-2"),
    pytest.param({"schema_version": 1}, "schema_version", "1", id="schema_version-number"),
    pytest.param({"schema_version": DROP}, "schema_version", "<missing>", id="schema_version-missing"),
    pytest.param({"transaction_id": ""}, "transaction_id", "''", id="transaction_id-empty"),
    pytest.param({"transaction_id": "x" * 65}, "transaction_id", "x" * 65, id="transaction_id-65-chars"),
    pytest.param({"transaction_id": "T 1"}, "transaction_id", "'T 1'", id="transaction_id-space"),
    pytest.param({"transaction_id": 1234}, "transaction_id", "1234", id="transaction_id-number"),
    pytest.param({"transaction_id": DROP}, "transaction_id", "<missing>", id="transaction_id-missing"),
    pytest.param({"timestamp": "2026-11-24T10:15:00"}, "timestamp", "2026-11-24T10:15:00", id="timestamp-no-offset"),
    pytest.param({"timestamp": 1795515300}, "timestamp", "1795515300", id="timestamp-unix-number"),
    pytest.param({"timestamp": "1795515300"}, "timestamp", "1795515300", id="timestamp-unix-string"),
    pytest.param({"timestamp": "2026-11-24"}, "timestamp", "2026-11-24", id="timestamp-date-only"),
    pytest.param({"timestamp": "2026-02-30T10:15:00Z"}, "timestamp", "2026-02-30T10:15:00Z", id="timestamp-not-a-day"),
    pytest.param({"timestamp": DROP}, "timestamp", "<missing>", id="timestamp-missing"),
    pytest.param({"source_system": "SAP"}, "source_system", "'SAP'", id="source_system-SAP"),
    pytest.param({"source_system": "erp"}, "source_system", "'erp'", id="source_system-lower-case"),
    pytest.param({"source_system": DROP}, "source_system", "<missing>", id="source_system-missing"),
    pytest.param({"material_number": ""}, "material_number", "''", id="material_number-empty"),
    pytest.param({"material_number": "M" * 41}, "material_number", "M" * 41, id="material_number-41-chars"),
    pytest.param({"material_number": " RM-1"}, "material_number", "' RM-1'", id="material_number-padded"),
    pytest.param({"material_number": 100234}, "material_number", "100234", id="material_number-number"),
    pytest.param({"material_number": DROP}, "material_number", "<missing>", id="material_number-missing"),
    pytest.param({"material_type": "RAW"}, "material_type", "'RAW'", id="material_type-upper-case"),
    pytest.param({"material_type": "semi"}, "material_type", "'semi'", id="material_type-unknown"),
    pytest.param({"material_type": DROP}, "material_type", "<missing>", id="material_type-missing"),
    pytest.param({"quantity": 0}, "quantity", "0", id="receipt-zero"),
    pytest.param({"quantity": "-1"}, "quantity", "-1", id="receipt-negative"),
    pytest.param({**ISSUE, "quantity": 0}, "quantity", "0", id="issue-zero"),
    pytest.param({**ISSUE, "quantity": "-0.5"}, "quantity", "-0.5", id="issue-negative"),
    pytest.param({**TRANSFER, "quantity": "0.000"}, "quantity", "0", id="transfer-zero"),
    pytest.param({**TRANSFER, "quantity": -2}, "quantity", "-2", id="transfer-negative"),
    pytest.param({**ADJUSTMENT, "quantity": 0}, "quantity", "0", id="adjustment-zero"),
    pytest.param({**ADJUSTMENT, "quantity": "-0"}, "quantity", "0", id="adjustment-minus-zero"),
    pytest.param({**CYCLE_COUNT, "quantity": -1}, "quantity", "-1", id="cycle_count-negative"),
    pytest.param({"quantity": True}, "quantity", "True", id="quantity-bool-true"),
    pytest.param({**CYCLE_COUNT, "quantity": False}, "quantity", "False", id="quantity-bool-false"),
    pytest.param({"quantity": "NaN"}, "quantity", "NaN", id="quantity-NaN-string"),
    pytest.param({"quantity": float("nan")}, "quantity", "NaN", id="quantity-NaN-literal"),
    pytest.param({"quantity": "Infinity"}, "quantity", "Infinity", id="quantity-Infinity-string"),
    pytest.param({"quantity": float("inf")}, "quantity", "Infinity", id="quantity-Infinity-literal"),
    pytest.param({**ADJUSTMENT, "quantity": "-Infinity"}, "quantity", "-Infinity", id="quantity-minus-inf"),
    pytest.param({"quantity": "1.1234567"}, "quantity", "1.1234567", id="quantity-7-decimals-string"),
    pytest.param({"quantity": 1.1234567}, "quantity", "1.1234567", id="quantity-7-decimals-number"),
    pytest.param({"quantity": "1e12"}, "quantity", "1e12", id="quantity-too-large"),
    pytest.param({"quantity": "12 kg"}, "quantity", "12 kg", id="quantity-not-numeric"),
    pytest.param({"quantity": ""}, "quantity", "''", id="quantity-empty-string"),
    pytest.param({"quantity": None}, "quantity", "None", id="quantity-null"),
    pytest.param({"quantity": [5]}, "quantity", "[5]", id="quantity-array"),
    pytest.param({"quantity": DROP}, "quantity", "<missing>", id="quantity-missing"),
    pytest.param({"unit": "kg"}, "unit", "'kg'", id="unit-lower-case"),
    pytest.param({"unit": ""}, "unit", "''", id="unit-empty"),
    pytest.param({"unit": "KILOGRAM"}, "unit", "KILOGRAM", id="unit-not-a-base-unit"),
    pytest.param({"unit": DROP}, "unit", "<missing>", id="unit-missing"),
    pytest.param({"location": "WH01"}, "location", "'WH01'", id="location-no-storage-location"),
    pytest.param({"location": "WH01/RM01/B1"}, "location", "WH01/RM01/B1", id="location-three-parts"),
    pytest.param({"location": "/RM01"}, "location", "'/RM01'", id="location-no-warehouse"),
    pytest.param({"location": "WH.01/RM01"}, "location", "WH.01/RM01", id="location-dot-in-warehouse"),
    pytest.param({"location": DROP}, "location", "<missing>", id="location-missing"),
    pytest.param({**TRANSFER, "to_location": DROP}, "to_location", "<missing>", id="transfer-no-to_location"),
    pytest.param({**TRANSFER, "to_location": "FG01"}, "to_location", "'FG01'", id="to_location-bad-form"),
    pytest.param(
        {**TRANSFER, "to_location": "WH01/RM01"}, "to_location", "WH01/RM01", id="to_location-same-as-location"
    ),
    pytest.param({"to_location": "WH01/FG01"}, "to_location", "WH01/FG01", id="to_location-on-receipt"),
    pytest.param(
        {**ADJUSTMENT, "to_location": "WH01/FG01"}, "to_location", "WH01/FG01", id="to_location-on-adjustment"
    ),
    pytest.param({"transaction_type": "move"}, "transaction_type", "'move'", id="transaction_type-unknown"),
    pytest.param({"transaction_type": DROP}, "transaction_type", "<missing>", id="transaction_type-missing"),
    pytest.param({"reason": "theft"}, "reason", "'theft'", id="reason-unknown"),
    pytest.param({"reason": DROP}, "reason", "<missing>", id="reason-missing"),
    pytest.param({"erp_reference": ""}, "erp_reference", "''", id="erp_reference-empty"),
    pytest.param({"erp_reference": DROP}, "erp_reference", "<missing>", id="erp_reference-missing"),
    pytest.param({"movement_type": "1O1"}, "movement_type", "1O1", id="movement_type-not-digits"),
    pytest.param({"movement_type": 101}, "movement_type", "101", id="movement_type-number"),
    pytest.param({**ISSUE, "movement_type": "101"}, "movement_type", "101", id="101-is-not-an-issue"),
    pytest.param({"movement_type": "261"}, "movement_type", "261", id="261-is-not-a-receipt"),
    pytest.param({"movement_type": "102"}, "movement_type", "102", id="reversal-102-is-not-a-receipt"),
    pytest.param({**ISSUE, "movement_type": "262"}, "movement_type", "262", id="reversal-262-is-not-an-issue"),
    pytest.param({"movement_type": "311"}, "movement_type", "311", id="311-is-not-a-receipt"),
    pytest.param({**TRANSFER, "movement_type": "101"}, "movement_type", "101", id="101-is-not-a-transfer"),
    pytest.param({**CYCLE_COUNT, "movement_type": "701"}, "movement_type", "701", id="701-is-not-a-count"),
    pytest.param({**ADJUSTMENT, "movement_type": "701", "quantity": "-5"}, "quantity", "-5", id="701-negative"),
    pytest.param({**ADJUSTMENT, "movement_type": "702", "quantity": "5"}, "quantity", "5", id="702-positive"),
    pytest.param({**RECON, "target_system": DROP}, "target_system", "<missing>", id="RECON-no-target_system"),
    pytest.param({**RECON, "target_system": "SAP"}, "target_system", "'SAP'", id="target_system-unknown"),
    pytest.param({"target_system": "MES"}, "target_system", "'MES'", id="target_system-on-ERP-message"),
    pytest.param({"source_system": "MES", "target_system": "ERP"}, "target_system", "'ERP'", id="target_system-on-MES"),
    pytest.param({"comment": "urgent"}, "comment", "'urgent'", id="unknown-extra-field"),
    pytest.param({"Quantity": "5"}, "Quantity", "'5'", id="field-name-wrong-case"),
]


@pytest.mark.parametrize(("changes", "field", "shown_value"), FAILING)
def test_a_message_that_breaks_a_rule_names_the_field_and_the_value(changes, field, shown_value):
    with pytest.raises(ContractViolation) as caught:
        parse_event(body(**changes))

    violation = caught.value
    assert violation.field == field
    assert shown_value in str(violation)
    assert violation.rule and violation.rule in str(violation)


def test_a_missing_field_is_reported_as_required():
    for field in GOOD:
        with pytest.raises(ContractViolation) as caught:
            parse_event(body(**{field: DROP}))
        assert (caught.value.field, caught.value.rule) == (field, "is required")


def test_the_same_transaction_id_twice_is_not_the_parsers_business():
    # Uniqueness is enforced where events are applied (invariant 2), never by the parser.
    assert parse_event(body()) == parse_event(body())


@pytest.mark.parametrize(
    ("sent", "utc"),
    [
        (f"{DAY}T10:15:00Z", datetime(Y, M, D, 10, 15, tzinfo=UTC)),
        (f"{DAY}t10:15:00z", datetime(Y, M, D, 10, 15, tzinfo=UTC)),
        (f"{DAY}T10:15:00+01:00", datetime(Y, M, D, 9, 15, tzinfo=UTC)),
        (f"{DAY}T00:30:00-05:30", datetime(Y, M, D, 6, 0, tzinfo=UTC)),
    ],
)
def test_a_timestamp_with_any_offset_is_normalised_to_utc(sent, utc):
    event = parse_event(body(timestamp=sent))

    assert event.timestamp == utc
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.to_message()["timestamp"] == utc.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("sent", "exact"),
    [("25.5", "25.5"), (25.5, "25.5"), (7, "7"), ("0.000001", "0.000001"), ("1.500000", "1.5"), ("100.0", "100")],
)
def test_numeric_strings_and_json_numbers_become_the_same_exact_decimal(sent, exact):
    event = parse_event(body(quantity=sent))

    assert event.quantity == Decimal(exact)
    assert event.to_message()["quantity"] == exact


# --- the body before it is an object ----------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"", "''", "empty", id="empty"),
    pytest.param(b"\xff\xfe{}", "\\xff\\xfe", "UTF-8", id="not-utf8"),
    pytest.param(
        json.dumps(message(material_number="RM-Grün"), ensure_ascii=False).encode("latin-1"),
        "schema_version",
        "UTF-8",
        id="latin-1-encoded",
    ),
    pytest.param(b"not json", "not json", "JSON", id="not-json"),
    pytest.param(body()[:-1], "schema_version", "JSON", id="truncated-json"),
    pytest.param(b"[1, 2]", "[1, 2]", "got list", id="array"),
    pytest.param(b'"receipt"', "'receipt'", "got str", id="string"),
    pytest.param(b"null", "None", "got NoneType", id="null"),
    pytest.param(b"42", "42", "got int", id="number"),
]


@pytest.mark.parametrize(("raw", "shown_value", "rule_words"), BAD_BODIES)
def test_a_body_that_is_not_a_json_object_is_rejected_as_a_whole(raw, shown_value, rule_words):
    with pytest.raises(ContractViolation) as caught:
        parse_event(raw)

    assert caught.value.field == "body"
    assert shown_value in str(caught.value)
    assert rule_words in caught.value.rule


def test_a_body_larger_than_max_body_bytes_is_rejected_with_its_size():
    raw = body(erp_reference="R" * 60)
    assert parse_event(raw, max_body_bytes=len(raw)).erp_reference == "R" * 60

    with pytest.raises(ContractViolation) as caught:
        parse_event(raw, max_body_bytes=len(raw) - 1)

    assert caught.value.field == "body"
    assert f"<{len(raw)} bytes>" in str(caught.value)
    assert f"at most {len(raw) - 1} bytes" in str(caught.value)


def test_the_size_limit_counts_bytes_not_characters():
    text = json.dumps(message(material_number="Ü" * 30), ensure_ascii=False)
    size = len(text.encode("utf-8"))
    assert len(text) < size

    with pytest.raises(ContractViolation) as caught:
        parse_event(text, max_body_bytes=size - 1)

    assert caught.value.field == "body"
    assert f"<{size} bytes>" in str(caught.value)


def test_try_parse_event_returns_the_violation_instead_of_raising():
    assert isinstance(try_parse_event(body()), InventoryEvent)
    violation = try_parse_event(body(unit="kg"))
    assert isinstance(violation, ContractViolation)
    assert violation.field == "unit"


# --- what a hostile or careless sender writes -------------------------------------------------
# Every case is refused with a ContractViolation naming the field, never with another exception:
# one such message must not stop a drain, a worker or the MES (invariant 3).


def _refused(raw: bytes | str | dict, **kw: Any) -> ContractViolation:
    with pytest.raises(ContractViolation) as caught:
        parse_event(raw, **kw)
    violation = caught.value
    str(violation).encode("utf-8")  # what operators read is always writable to headers, JSON, logs
    assert len(str(violation)) < 1000
    return violation


def _text(**changes: Any) -> str:
    """The good receipt as JSON text, fields spliced in as raw JSON (for what json.dumps won't write)."""
    fields = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in GOOD.items() if k not in changes]
    fields += [f"{json.dumps(k)}: {v}" for k, v in changes.items()]
    return "{" + ", ".join(fields) + "}"


@pytest.mark.parametrize("field", ["quantity", "transaction_id", "unit"])
def test_a_field_given_twice_is_refused_naming_the_field(field):
    raw = _text()[:-1] + f", {json.dumps(field)}: {json.dumps(GOOD[field])}}}"

    violation = _refused(raw.encode())

    assert violation.field == field
    assert "twice" in violation.rule


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "12\n"),
        ("timestamp", f"{DAY}T10:15:00Z\n"),
        ("transaction_id", "T-1\n"),
        ("material_number", "RM-1\n"),
        ("erp_reference", "4900\n"),
        ("unit", "KG\n"),
        ("location", "WH01/RM01\n"),
        ("movement_type", "101\n"),
    ],
)
def test_a_trailing_newline_is_not_part_of_any_valid_value(field, value):
    violation = _refused(body(**{field: value}))

    assert violation.field == field


@pytest.mark.parametrize("field", ["transaction_id", "material_number", "erp_reference"])
@pytest.mark.parametrize(
    "char",
    [
        pytest.param("\x00", id="NUL"),
        pytest.param("\x07", id="BEL"),
        pytest.param("\x1b", id="ESC"),
        pytest.param("\x7f", id="DEL"),
        pytest.param("\x85", id="NEL"),
        pytest.param("\u200b", id="zero-width-space"),
        pytest.param("\u200d", id="zero-width-joiner"),
        pytest.param("\u2060", id="word-joiner"),
        pytest.param("\ufeff", id="BOM"),
        pytest.param("\u202e", id="right-to-left-override"),
        pytest.param("\u2028", id="line-separator"),
        pytest.param("\u00a0", id="no-break-space"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_an_identifier_with_a_control_zero_width_or_surrogate_character_is_refused(field, char):
    value = f"ID{char}42"

    violation = _refused(body(**{field: value}))

    assert violation.field == field
    assert violation.rule


def test_printable_non_ascii_identifiers_are_still_accepted():
    event = parse_event(body(material_number="RM-Grün-ß", erp_reference="Bestellung 7"))

    assert event.material_number == "RM-Grün-ß"


def test_a_movement_type_in_other_digits_is_refused():
    assert _refused(body(movement_type="١٠١")).field == "movement_type"


@pytest.mark.parametrize("fraction", ["1234567", "12345678", "123456789"])
def test_more_than_6_fractional_second_digits_are_refused_not_cut(fraction):
    violation = _refused(body(timestamp=f"{DAY}T10:15:00.{fraction}Z"))

    assert violation.field == "timestamp"
    assert "6 digits" in violation.rule


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("timestamp", "words"),
    [
        pytest.param(_iso(datetime.now(UTC) - timedelta(days=401)), "400 days in the past", id="401-days-ago"),
        pytest.param("0001-01-01T00:00:00Z", "400 days in the past", id="year-1"),
        pytest.param("1970-01-01T00:00:00+14:00", "400 days in the past", id="1970"),
        pytest.param(_iso(datetime.now(UTC) + timedelta(hours=2)), "60 minutes in the future", id="in-2-hours"),
        pytest.param("9999-12-31T23:59:59Z", "60 minutes in the future", id="year-9999"),
        pytest.param("0001-01-01T00:00:00+01:00", "not a real date and time in UTC", id="utc-before-year-1"),
        pytest.param("9999-12-31T23:59:59-01:00", "not a real date and time in UTC", id="utc-after-year-9999"),
    ],
)
def test_a_timestamp_outside_the_horizon_or_outside_utc_is_refused(timestamp, words):
    violation = _refused(body(timestamp=timestamp))

    assert violation.field == "timestamp"
    assert words in violation.rule


def test_the_horizon_accepts_recent_hours_and_follows_the_limits_given():
    now = datetime.now(UTC)
    assert parse_event(body(timestamp=_iso(now - timedelta(days=399)))).timestamp < now
    assert parse_event(body(timestamp=_iso(now + timedelta(minutes=30)))).timestamp > now

    tight = ContractLimits(max_age_days=1, max_future_minutes=0)
    violation = _refused(body(timestamp=_iso(now - timedelta(days=2))), limits=tight)
    assert "1 days in the past" in violation.rule
    assert "0 minutes in the future" in _refused(body(timestamp=_iso(now + timedelta(minutes=5))), limits=tight).rule
    unbounded = ContractLimits(max_age_days=None, max_future_minutes=None)
    assert parse_event(body(timestamp="2001-01-01T00:00:00Z"), limits=unbounded).timestamp.year == 2001


def test_the_limits_come_from_settings(settings):
    changed = settings.model_copy(
        update={"contract": settings.contract.model_copy(update={"max_age_days": 2, "max_future_minutes": 5})}
    )

    limits = ContractLimits.from_settings(changed)

    assert limits == ContractLimits(settings.staging.max_body_bytes, 2, 5)
    assert ContractLimits.from_settings(settings) == ContractLimits()


def test_an_event_built_in_code_has_no_time_horizon_unless_limits_are_given():
    # The ERP's documents and the MES's applied log are history: reading them back never fails on age.
    old = message(timestamp="2001-01-01T00:00:00Z")

    assert parse_event(old).timestamp.year == 2001
    assert _refused(old, limits=DEFAULT_LIMITS).field == "timestamp"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["quantity", "erp_reference"])
def test_nan_and_infinity_are_not_json_and_are_refused_naming_the_field(constant, field):
    violation = _refused(_text(**{field: constant}).encode())

    assert violation.field == field
    assert "NaN and Infinity" in violation.rule


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_text(quantity="[" * 1000 + "]" * 1000), id="array-1000-deep-in-a-field"),
        pytest.param(_text(quantity='{"a":' * 1000 + "1" + "}" * 1000), id="object-1000-deep-in-a-field"),
        pytest.param("[" * 50_000, id="unclosed-50000-deep"),
        pytest.param('{"a":' * 17 + "1" + "}" * 17, id="17-deep"),
    ],
)
def test_json_nested_too_deep_is_refused_before_it_is_parsed(raw):
    violation = _refused(raw.encode())

    assert violation.field == "body"
    assert "more than 16 deep" in violation.rule


def test_brackets_inside_strings_do_not_count_as_nesting():
    event = parse_event(body(erp_reference='[{"\\\\' + "[" * 30, material_number="{" * 40))

    assert event.material_number == "{" * 40


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"quantity": "1" * 5000}, "quantity", id="5000-digit-integer"),
        pytest.param({"quantity": "1" * 41}, "quantity", id="41-digit-integer"),
        pytest.param({"quantity": "-" + "9" * 4301}, "quantity", id="negative-4301-digits"),
        pytest.param({"quantity": "1." + "0" * 5000}, "quantity", id="5000-digit-decimal-number"),
        pytest.param({"quantity": json.dumps("1." + "0" * 5000)}, "quantity", id="5000-digit-decimal-string"),
        pytest.param({"quantity": "1e999999999999999999999"}, "quantity", id="exponent-beyond-decimal"),
        pytest.param({"quantity": "0.1234567890123"}, "quantity", id="13-decimals-number"),
        pytest.param({"erp_reference": "7" * 5000}, "erp_reference", id="5000-digit-integer-elsewhere"),
    ],
)
def test_numbers_too_long_to_be_quantities_are_refused_before_conversion(changes, field):
    violation = _refused(_text(**changes).encode())

    assert violation.field == field


def test_a_huge_integer_in_an_event_built_in_code_is_refused_and_shown_short():
    violation = _refused(message(quantity=10**5000))

    assert violation.field == "quantity"
    assert "digits>" in str(violation)


def test_json_numbers_keep_their_exact_decimal_value():
    assert parse_event(_text(quantity="0.1").encode()).quantity == Decimal("0.1")
    assert parse_event(_text(quantity="123456789.123456").encode()).quantity == Decimal("123456789.123456")


def test_an_unexpected_error_while_reading_becomes_a_violation_of_the_body():
    class Treacherous(str):
        def replace(self, *_args):  # what no JSON decoder ever returns: a str that fails
            raise RuntimeError("boom")

    violation = _refused(message(timestamp=Treacherous(f"{DAY}T10:15:00Z")))

    assert violation.field == "body"
    assert violation.rule == "could not be read: RuntimeError: boom"


def test_a_violation_shows_long_and_undecodable_values_short_and_encodable():
    violation = _refused(body(transaction_id="\ud800" * 500))

    assert violation.field == "transaction_id"
    assert len(violation.value) <= 200
    violation.value.encode("utf-8")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(body(), message(), id="valid"),
        pytest.param(
            _text(quantity='"1"').replace('"unit"', '"quantity": "2", "unit"', 1).encode(),
            {**GOOD, "quantity": "1"},
            id="duplicate-keys-last-wins",
        ),  # fmt: skip
        pytest.param(
            b'{"transaction_id": "T-1", "quantity": ' + b"1" * 5000 + b"}",
            {"transaction_id": "T-1"},
            id="too-long-number-left-out",
        ),  # fmt: skip
        pytest.param(b'{"transaction_id": "T\\ud800", "x": NaN}', {"transaction_id": "T\\ud800"}, id="surrogate"),
        pytest.param(b'{"transaction_id": "T\xff"}', {"transaction_id": "T\ufffd"}, id="bad-utf8-replaced"),
        pytest.param(b'{"a":' * 2000 + b"1" + b"}" * 2000, {}, id="too-deep"),
        pytest.param(b"[1, 2]", {}, id="array"),
        pytest.param(b"not json", {}, id="not-json"),
        pytest.param(b"", {}, id="empty"),
        pytest.param(None, {}, id="none"),
        pytest.param(12, {}, id="int"),
    ],
)
def test_best_effort_fields_reads_what_it_can_and_never_raises(raw, expected):
    assert best_effort_fields(raw) == expected


# --- routing keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "inventory.wh01.raw.receipt"),
        ({"location": "wh02/FG01", "material_type": "finished", **ISSUE}, "inventory.wh02.finished.issue"),
        ({**CYCLE_COUNT, "material_type": "mro"}, "inventory.wh01.mro.cycle_count"),
        ({**TRANSFER, "location": "WH02/RM01"}, "inventory.wh02.raw.transfer"),
    ],
)
def test_the_routing_key_is_lower_case_and_taken_from_location_and_types(changes, expected):
    event = parse_event(body(**changes))

    assert event.routing_key == expected


@pytest.mark.parametrize(
    ("changes", "critical"),
    [({}, True), (ISSUE, True), (TRANSFER, True), (ADJUSTMENT, False), (CYCLE_COUNT, False)],
)
def test_receipts_issues_and_transfers_are_critical_the_rest_is_batched(changes, critical):
    assert parse_event(body(**changes)).is_critical is critical


def test_the_routing_key_builder_lower_cases_the_warehouse():
    assert routing_key("WH01", "packaging", "adjustment") == "inventory.wh01.packaging.adjustment"


@pytest.mark.parametrize(
    ("tokens", "field", "bad"),
    [
        (("WH.01", "raw", "receipt"), "warehouse", "WH.01"),
        (("WH#", "raw", "receipt"), "warehouse", "WH#"),
        (("WH*", "raw", "receipt"), "warehouse", "WH*"),
        (("", "raw", "receipt"), "warehouse", "''"),
        (("WH01", "raw.x", "receipt"), "material_type", "raw.x"),
        (("WH01", "#", "receipt"), "material_type", "#"),
        (("WH01", "raw", "*"), "transaction_type", "*"),
        (("WH01", "raw", "receipt.#"), "transaction_type", "receipt.#"),
    ],
)
def test_a_routing_key_token_with_a_wildcard_or_dot_is_rejected(tokens, field, bad):
    with pytest.raises(ContractViolation) as caught:
        routing_key(*tokens)

    assert caught.value.field == field
    assert bad in str(caught.value)


# --- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"timestamp": f"{DAY}T23:59:59.999999+02:00", "quantity": 0.25},
        {**TRANSFER, "movement_type": "311"},
        RECON,
        {**CYCLE_COUNT, "quantity": 0, "material_type": "packaging", "unit": "EA"},
        {**ADJUSTMENT, "movement_type": "702", "quantity": "-1.000001", "source_system": "MES"},
    ],
)
def test_an_event_survives_a_round_trip_through_its_body(changes):
    event = parse_event(body(**changes))

    again = parse_event(event.to_body())

    assert again == event
    assert again.to_body() == event.to_body()
    assert json.loads(event.to_body())["timestamp"].endswith("Z")


def test_every_sap_movement_type_of_the_design_maps_as_documented():
    documented = {
        **dict.fromkeys(["101", "501", "561"], "receipt"),
        **dict.fromkeys(["261", "601", "641", "551", "122", "161"], "issue"),
        **dict.fromkeys(["301", "311"], "transfer"),
        **dict.fromkeys(["701", "702"], "adjustment"),
    }
    opposite = {"receipt": "issue", "issue": "receipt", "transfer": "transfer"}

    for code, kind in documented.items():
        assert MOVEMENT_TYPES[code] == kind
        if kind in opposite:
            assert MOVEMENT_TYPES[str(int(code) + 1)] == opposite[kind], f"reversal of {code}"


# --- JSON Schema ------------------------------------------------------------------------------


def test_the_json_schema_describes_exactly_the_contract_fields():
    schema = json_schema()

    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(InventoryEvent.model_fields)
    assert set(schema["required"]) == set(GOOD)
    props = schema["properties"]
    for field, literal in [
        ("source_system", SourceSystem),
        ("material_type", MaterialType),
        ("transaction_type", TransactionType),
        ("reason", Reason),
    ]:
        assert props[field]["enum"] == list(get_args(literal)), field
    assert props["target_system"]["enum"] == ["ERP", "MES", None]
    for prop in props.values():
        if "pattern" in prop:
            re.compile(prop["pattern"])


SCHEMA_GOOD = [
    pytest.param({}, id="receipt"),
    pytest.param({"quantity": 25.5}, id="number-quantity"),
    pytest.param({**TRANSFER, "movement_type": "311"}, id="transfer"),
    pytest.param(RECON, id="recon-adjustment"),
    pytest.param({**CYCLE_COUNT, "quantity": "0"}, id="cycle-count"),
]
SCHEMA_BAD = [
    pytest.param({"comment": "x"}, id="extra-field"),
    pytest.param({"unit": DROP}, id="missing-field"),
    pytest.param({"schema_version": "2"}, id="schema-version"),
    pytest.param({"material_type": "semi"}, id="material-type"),
    pytest.param({"reason": "theft"}, id="reason"),
    pytest.param({"timestamp": "2026-11-24T10:15:00"}, id="timestamp-no-offset"),
    pytest.param({"timestamp": 1795515300}, id="timestamp-number"),
    pytest.param({"quantity": "-5"}, id="negative-receipt"),
    pytest.param({"quantity": True}, id="bool-quantity"),
    pytest.param({"quantity": "1.1234567"}, id="seven-decimals"),
    pytest.param({"location": "WH01"}, id="location-form"),
    pytest.param({**TRANSFER, "to_location": DROP}, id="transfer-without-to"),
    pytest.param({"to_location": "WH01/FG01"}, id="receipt-with-to"),
    pytest.param({**RECON, "target_system": DROP}, id="recon-without-target"),
    pytest.param({"target_system": "MES"}, id="erp-with-target"),
    pytest.param({"movement_type": "1O1"}, id="movement-type-form"),
    pytest.param({"movement_type": "101\n"}, id="movement-type-newline"),
    pytest.param({"quantity": "12\n"}, id="quantity-newline"),
    pytest.param({"unit": "KG\n"}, id="unit-newline"),
    pytest.param({"timestamp": f"{DAY}T10:15:00Z\n"}, id="timestamp-newline"),
    pytest.param({"timestamp": f"{DAY}T10:15:00.1234567Z"}, id="timestamp-7-fraction-digits"),
    pytest.param({"transaction_id": "T-1\n"}, id="transaction-id-newline"),
    pytest.param({"transaction_id": "T\u200b1"}, id="transaction-id-zero-width"),
    pytest.param({"material_number": "RM\x001"}, id="material-number-nul"),
    pytest.param({"erp_reference": "49\u202800"}, id="erp-reference-line-separator"),
    pytest.param({"erp_reference": "49\x07"}, id="erp-reference-bell"),
]


@pytest.fixture(scope="module")
def schema_validator():
    import jsonschema  # a dev dependency: these checks never skip

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("changes", SCHEMA_GOOD)
def test_a_good_event_is_valid_for_the_json_schema_too(schema_validator, changes):
    event = parse_event(body(**changes))

    assert list(schema_validator.iter_errors(message(**changes))) == []
    assert list(schema_validator.iter_errors(event.to_message())) == []


@pytest.mark.parametrize("changes", SCHEMA_BAD)
def test_the_json_schema_rejects_what_the_parser_rejects(schema_validator, changes):
    assert isinstance(try_parse_event(body(**changes)), ContractViolation)
    assert list(schema_validator.iter_errors(message(**changes))) != []


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_contract_schema_prints_the_json_schema():
    result = CliRunner().invoke(main, ["contract", "schema"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json_schema()


def test_cli_contract_validate_reports_each_bad_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"\n".join(
            [
                body(),
                b"",
                body(transaction_id="T-2", quantity="-4"),
                b"{not json",
                body(transaction_id="T-4", **TRANSFER),
            ]
        )
        + b"\r\n"
    )

    result = CliRunner().invoke(main, ["contract", "validate", str(events)])

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("line 3: quantity=-4: must be > 0 for a receipt")
    assert lines[1].startswith("line 4: body=")
    assert lines[-1] == "2 valid, 2 invalid"


def test_cli_contract_validate_exits_zero_when_every_line_is_good(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(body() + b"\n" + body(transaction_id="T-2", **RECON) + b"\n")

    result = CliRunner().invoke(main, ["contract", "validate", str(events)])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2 valid, 0 invalid"


def test_a_transaction_id_too_long_for_an_amqp_message_id_is_refused():
    # 64 characters, but 256 bytes in UTF-8: it could never be published as the message_id.
    with pytest.raises(ContractViolation, match="at most 255 bytes"):
        parse_event({**GOOD, "transaction_id": "\U0001d538" * 64})
    assert parse_event({**GOOD, "transaction_id": "\u00e9" * 64}).transaction_id == "\u00e9" * 64  # 128 bytes
