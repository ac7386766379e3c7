"""Whatever a sender writes, parse_event returns an InventoryEvent or raises ContractViolation.

Nothing else may escape it (invariant 3): an exception of another kind stops the drain, the
worker or the MES on that one message. Hypothesis writes the bodies: arbitrary bytes, arbitrary
JSON, and valid events with a field replaced, nested deep, given huge numbers or odd strings.
A few thousand examples in all, so the suite stays a few seconds longer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invsync_pipeline.contract import ContractViolation, InventoryEvent, best_effort_fields, parse_event
from invsync_pipeline_tests.factories import event

EXAMPLES = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = list(event())

# Text of any code point, lone surrogates and control characters included.
odd_text = st.text(st.characters(exclude_categories=()), max_size=80)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | odd_text
    | st.sampled_from(["", "12\n", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "NaN"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def timestamps(draw) -> str:
    """RFC 3339-shaped text over every year, offset and fraction length, valid or not."""
    year = draw(st.integers(0, 9999))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    fraction = draw(st.text("0123456789", max_size=12))
    offset = draw(st.sampled_from(["Z", "z", "+01:00", "-01:00", "+23:59", "-23:59", "+99:99", ""]))
    fraction = f".{fraction}" if fraction else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"


raw_json_values = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.integers(1, 6000).map(lambda n: "9" * n),  # integers far past 4,300 digits
    st.integers(1, 6000).map(lambda n: "1." + "0" * n),  # decimals as long
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # nesting far past the recursion limit
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999999999", "-0", "1E-400"]),
    timestamps().map(json.dumps),
    odd_text.map(json.dumps),
)


@st.composite
def mutated_events(draw) -> bytes:
    """A valid event as JSON text with some fields replaced, doubled, or the text cut or flipped."""
    base = event(timestamp=(datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    pieces = {key: json.dumps(value) for key, value in base.items()}
    for field in draw(st.lists(st.sampled_from([*FIELDS, "extra"]), max_size=3)):
        pieces[field] = draw(raw_json_values)
    items = [f"{json.dumps(k)}:{v}" for k, v in pieces.items()]
    if draw(st.booleans()):  # the same key twice
        key = draw(st.sampled_from(FIELDS))
        items.append(f"{json.dumps(key)}:{draw(raw_json_values)}")
    text = "{" + ",".join(items) + "}"
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, 2))
    if cut == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == 2 and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    return raw


def _holds(body: Any) -> None:
    try:
        parsed = parse_event(body)
    except ContractViolation as violation:
        assert isinstance(violation.field, str) and violation.rule
        str(violation).encode("utf-8")  # always writable to a header, a JSON file, a log
        return
    assert isinstance(parsed, InventoryEvent)


@EXAMPLES
@given(st.binary(max_size=3000))
def test_any_bytes_parse_or_are_refused(body):
    _holds(body)
    assert isinstance(best_effort_fields(body), dict)


@EXAMPLES
@given(json_values)
def test_any_json_value_parses_or_is_refused(value):
    _holds(json.dumps(value, allow_nan=True).encode())


@EXAMPLES
@given(mutated_events())
def test_any_mutation_of_a_valid_event_parses_or_is_refused(body):
    _holds(body)
    assert isinstance(best_effort_fields(body), dict)


@EXAMPLES
@given(st.sampled_from(FIELDS), json_values | st.integers(min_value=10**40) | st.decimals())
def test_any_value_in_an_event_built_in_code_parses_or_is_refused(field, value):
    _holds({**event(), field: value})
