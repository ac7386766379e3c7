"""Fuzz the message contract: random mutations of valid bodies through ``parse_event``.

Every body must come back as an InventoryEvent or be refused with a ContractViolation; anything
else is a crash, the kind of exception that stops a drain, a worker or the MES on one message
(invariant 3). The goal is 0 crashes.

Mutations, one to three per body: byte flips, truncations, field swaps, the three kinds of body
that once crashed the parser (JSON nested ~1,000 deep, a 5,000-digit integer quantity, a
timestamp whose UTC conversion overflows), huge numbers, deep nesting, odd Unicode (controls,
zero-width, lone surrogates), duplicate keys, NaN and Infinity, wrong types, missing and extra
fields, long fractions and far years.

    .venv/bin/python bench/fuzz_contract.py [--bodies 120000] [--seed 1] [--contract FILE]

``--contract`` fuzzes another contract.py instead (e.g. an older one from git) to compare.
Prints one JSON line last: {"bodies", "accepted", "refused", "crashes", "crash_kinds", "seconds"}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from invsync_pipeline import contract as current_contract

_RECENT = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
_TEMPLATES: list[dict[str, Any]] = [
    {"transaction_type": "receipt", "reason": "purchase_receipt", "movement_type": "101", "quantity": "25.5"},
    {"transaction_type": "issue", "reason": "production_consumption", "movement_type": "261", "quantity": 3},
    {"transaction_type": "transfer", "reason": "stock_transfer", "to_location": "WH01/FG01", "quantity": 0.5},
    {"transaction_type": "adjustment", "reason": "correction", "quantity": "-2"},
    {"transaction_type": "cycle_count", "reason": "physical_inventory", "quantity": 0},
    {"transaction_type": "adjustment", "reason": "correction", "source_system": "RECON", "target_system": "MES",
     "quantity": "-1.25"},
]  # fmt: skip
_ODD_CHARS = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\u2060", "\ufeff", "\u202e", "\u2028",
              "\u00a0", "\ud800", "\udfff", "\U0001f600", "é", "\u0301", "\ufffd"]  # fmt: skip
_KNOWN_CRASHERS = [
    ("extra", "[" * 1000 + "]" * 1000),  # RecursionError before issue 11
    ("quantity", "1" * 5000),  # ValueError: over 4,300 digits
    ("timestamp", '"0001-01-01T00:00:00+01:00"'),  # OverflowError converting to UTC
    ("timestamp", '"9999-12-31T23:59:59-01:00"'),
]


def _valid(rng: random.Random, n: int) -> dict[str, str]:
    """A valid event as field -> JSON text, so mutations can splice in raw JSON."""
    body: dict[str, Any] = {
        "schema_version": "1", "transaction_id": f"FUZZ-{n:09d}", "timestamp": _RECENT, "source_system": "ERP",
        "material_number": f"MAT-{n % 997}",
        "material_type": rng.choice(["raw", "wip", "finished", "packaging", "mro"]),
        "unit": "KG", "location": "WH01/RM01", "erp_reference": f"49{n:08d}",
    }  # fmt: skip
    body.update(rng.choice(_TEMPLATES))
    return {key: json.dumps(value) for key, value in body.items()}


def _huge_number(rng: random.Random) -> str:
    digits = "".join(rng.choices("0123456789", k=rng.choice([30, 41, 300, 4301, 5000, rng.randint(1, 12000)])))
    digits = digits.lstrip("0") or "1"
    return (
        rng.choice(["", "-"])
        + digits
        + rng.choice(["", "." + "9" * rng.randint(1, 5000), "e" + str(rng.randint(-(10**6), 10**6))])
    )


def _deep(rng: random.Random) -> str:
    depth = rng.choice([17, 100, 999, 1000, 3000, rng.randint(1, 20000)])
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def _odd_string(rng: random.Random, base: str) -> str:
    chars = list(json.loads(base) if base.startswith('"') else "X")
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randint(0, len(chars)), rng.choice(_ODD_CHARS))
    text = "".join(chars)
    # A lone surrogate can only travel as a \u escape; the others sometimes raw, sometimes escaped.
    return json.dumps(text, ensure_ascii=rng.random() < 0.5 or any("\ud800" <= c <= "\udfff" for c in text))


def _timestamp(rng: random.Random) -> str:
    year = rng.choice([1, 2, 1969, 1970, 2026, 9998, 9999, rng.randint(0, 9999)])
    fraction = rng.choice(["", ".1", ".123456", ".1234567", ".12345678", ".123456789", "." + "9" * 20])
    offset = rng.choice(["Z", "z", "+01:00", "-01:00", "+14:00", "-12:00", "+23:59", "+24:00", "", "\n"])
    return json.dumps(f"{year:04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}T{rng.randint(0, 25):02d}:"
                      f"{rng.randint(0, 60):02d}:{rng.randint(0, 61):02d}{fraction}{offset}")  # fmt: skip


def _wrong_type(rng: random.Random) -> str:
    return rng.choice(["null", "true", "false", "[]", "{}", "0", "-0", "1.5", '""', '"12\\n"', "[1, 2]", '{"a": 1}',
                       "NaN", "Infinity", "-Infinity", "1e309", "1E-400", '"NaN"'])  # fmt: skip


def _mutate_fields(rng: random.Random, fields: dict[str, str], extra: list[str]) -> None:
    kind = rng.randrange(10)
    names = list(fields)
    if kind == 0:  # swap two fields' values
        a, b = rng.sample(names, 2)
        fields[a], fields[b] = fields[b], fields[a]
    elif kind == 1:  # one of the bodies that crashed before
        name, raw = rng.choice(_KNOWN_CRASHERS)
        fields[name] = raw
    elif kind == 2:
        fields[rng.choice([*names, "extra"])] = _huge_number(rng)
    elif kind == 3:
        fields[rng.choice([*names, "extra"])] = _deep(rng)
    elif kind == 4:
        name = rng.choice(["transaction_id", "material_number", "erp_reference", "unit", "location", "reason"])
        fields[name] = _odd_string(rng, fields.get(name, '"X"'))
    elif kind == 5:  # a key given twice
        name = rng.choice(names)
        extra.append(f"{json.dumps(name)}:{rng.choice([fields[name], _wrong_type(rng)])}")
    elif kind == 6:
        fields["timestamp"] = _timestamp(rng)
    elif kind == 7:
        fields[rng.choice(names)] = _wrong_type(rng)
    elif kind == 8:
        del fields[rng.choice(names)]
    else:
        fields[rng.choice(["note", "Quantity", "\u200bquantity", "quantity\x00"])] = rng.choice(['"x"', "1", "null"])


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.randrange(4)
    if not raw:
        return raw
    if kind == 0:  # flip bytes
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at] ^= rng.randint(1, 255)
        return bytes(data)
    if kind == 1:  # truncate
        return raw[: rng.randrange(len(raw))]
    if kind == 2:  # insert a random byte run
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.randbytes(rng.randint(1, 8)) + raw[at:]
    # wrap the whole body in arrays or objects
    depth = rng.choice([2, 50, 1000, 5000])
    return b"[" * depth + raw + b"]" * depth


def body(rng: random.Random, n: int) -> bytes:
    fields, extra = _valid(rng, n), []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.8:
            _mutate_fields(rng, fields, extra)
    items = [f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in fields.items()] + extra
    raw = ("{" + ",".join(items) + "}").encode("utf-8", "surrogatepass")
    if rng.random() < 0.25:
        raw = _mutate_bytes(rng, raw)
    return raw


def _load(path: str | None) -> tuple[Callable[[bytes], Any], type[Exception], type]:
    if path is None:
        module = current_contract
    else:
        spec = importlib.util.spec_from_file_location("fuzzed_contract", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["fuzzed_contract"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.parse_event, module.ContractViolation, module.InventoryEvent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=120_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--contract", default=None, help="another contract.py to fuzz, to compare")
    args = parser.parse_args()
    parse_event, violation_type, event_type = _load(args.contract)

    rng = random.Random(args.seed)
    bodies = [body(rng, n) for n in range(args.bodies)]
    accepted = refused = 0
    crash_kinds: Counter[str] = Counter()
    first_crash: dict[str, bytes] = {}
    started = time.perf_counter()
    for raw in bodies:
        try:
            result = parse_event(raw)
        except violation_type:
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
            kind = type(exc).__name__
            crash_kinds[kind] += 1
            first_crash.setdefault(kind, raw[:120])
            continue
        if isinstance(result, event_type):
            accepted += 1
        else:
            crash_kinds[f"returned {type(result).__name__}"] += 1
    seconds = time.perf_counter() - started
    for kind, example in first_crash.items():
        print(f"first {kind}: {example!r}", file=sys.stderr)
    print(json.dumps({"bodies": args.bodies, "accepted": accepted, "refused": refused,
                      "crashes": sum(crash_kinds.values()), "crash_kinds": dict(crash_kinds),
                      "seconds": round(seconds, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
