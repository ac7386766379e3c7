"""The SAP-shaped ERP tables as SQLAlchemy Core, with real table and column names taken from config.

Logical tables and their SAP-like defaults (override any name in ``erp.tables`` of the config):

- ``materials`` (MARA/MBEW/MARC): matnr, mtart, meins, verpr, waers, maabc
- ``stock`` (MARD): matnr, werks, lgort, labst, meins
- ``documents`` (MATDOC): mblnr, mjahr, zeile, bwart, shkzg, matnr, werks, lgort, menge, meins,
  cputimestamp (entry time, UTC), zz_transaction_id, kzbew, iblnr, xblnr
- ``postings`` (invsync's own log of posted transaction ids; only where invsync posts)
- ``number_ranges`` (NRIV): object, nrlevel

A mapping looks like ``{"documents": {"__table__": "sapsr3.matdoc", "quantity": "MENGE"}}``; a
``schema.table`` name reads from that PostgreSQL schema. Columns marked optional may be mapped to
"" when a replica lacks them (reading still works; posting needs them). Material types (MTART)
that are not SAP standard are mapped with keys like ``"mtart.ZROH": "raw"`` in ``materials``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from invsync_pipeline.settings import ConfigError

QUANTITY_DECIMALS = 6
_SCALE = Decimal(1).scaleb(-QUANTITY_DECIMALS)

# SAP standard material types -> contract material types. HAWA (trading goods) is bought to be
# sold, so it routes with finished goods.
DEFAULT_MTART: dict[str, str] = {
    "ROH": "raw", "HALB": "wip", "FERT": "finished", "HAWA": "finished", "VERP": "packaging",
    "ERSA": "mro", "HIBE": "mro", "NLAG": "mro", "UNBW": "mro",
}  # fmt: skip
# Contract material type -> the MTART written when posting creates a material master.
MTART_FOR_TYPE: dict[str, str] = {"raw": "ROH", "wip": "HALB", "finished": "FERT", "packaging": "VERP", "mro": "ERSA"}
MATERIAL_DOCUMENT_RANGE = "MATBELEG"
FIRST_DOCUMENT_NUMBER = 4_900_000_000


class Quantity(sa.TypeDecorator):
    """An exact decimal quantity: NUMERIC on PostgreSQL, integer millionths on SQLite.

    SQLite has no decimal type; its REAL would make sums and running balances drift, so the
    value is scaled to an integer and every SUM stays exact."""

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(24, QUANTITY_DECIMALS, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        quantity = Decimal(str(value)) if not isinstance(value, Decimal) else value
        if quantity != quantity.quantize(_SCALE):
            raise ValueError(f"quantity {quantity} has more than {QUANTITY_DECIMALS} decimal places")
        return int(quantity.scaleb(QUANTITY_DECIMALS)) if dialect.name == "sqlite" else quantity

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-QUANTITY_DECIMALS)
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UtcDateTime(sa.TypeDecorator):
    """A UTC instant: timestamptz on PostgreSQL, naive UTC text on SQLite; aware UTC in Python."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.DateTime(timezone=True))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite compares the stored text, so every value must be naive UTC in one format.
        return value.replace(tzinfo=None) if dialect.name != "postgresql" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Col:
    default: str
    type_: Callable[[], TypeEngine[Any]]
    primary_key: bool = False
    nullable: bool = False
    optional: bool = False  # may be mapped to "" for a replica that lacks it


def _s(n: int) -> Callable[[], TypeEngine[Any]]:
    return lambda: sa.String(n)


LOGICAL_TABLES: dict[str, tuple[str, dict[str, _Col]]] = {
    "materials": ("mara", {
        "material": _Col("matnr", _s(40), primary_key=True),
        "material_type": _Col("mtart", _s(4)),
        "base_unit": _Col("meins", _s(6)),
        "unit_cost": _Col("verpr", lambda: sa.Numeric(15, 4), nullable=True, optional=True),
        "currency": _Col("waers", _s(5), nullable=True, optional=True),
        "abc_class": _Col("maabc", _s(1), nullable=True, optional=True),
    }),
    "stock": ("mard", {
        "material": _Col("matnr", _s(40), primary_key=True),
        "plant": _Col("werks", _s(16), primary_key=True),
        "storage_location": _Col("lgort", _s(16), primary_key=True),
        "quantity": _Col("labst", Quantity),
        "unit": _Col("meins", _s(6), nullable=True, optional=True),
    }),
    "documents": ("matdoc", {
        "document_number": _Col("mblnr", _s(10), primary_key=True),
        "document_year": _Col("mjahr", _s(4), primary_key=True),
        "item": _Col("zeile", sa.Integer, primary_key=True),
        "movement_type": _Col("bwart", _s(3)),
        "debit_credit": _Col("shkzg", _s(1)),
        "material": _Col("matnr", _s(40)),
        "plant": _Col("werks", _s(16)),
        "storage_location": _Col("lgort", _s(16)),
        "quantity": _Col("menge", Quantity),
        "unit": _Col("meins", _s(6)),
        "entry_timestamp": _Col("cputimestamp", UtcDateTime),
        "transaction_id": _Col("zz_transaction_id", _s(64), nullable=True, optional=True),
        "movement_indicator": _Col("kzbew", _s(1), nullable=True, optional=True),
        "inventory_document": _Col("iblnr", _s(64), nullable=True, optional=True),
        "reference": _Col("xblnr", _s(64), nullable=True, optional=True),
    }),
    "postings": ("zinvsync_postings", {
        "transaction_id": _Col("zz_transaction_id", _s(64), primary_key=True),
        "document_number": _Col("mblnr", _s(10), nullable=True),
        "document_year": _Col("mjahr", _s(4), nullable=True),
        "posted_at": _Col("posted_at", UtcDateTime),
    }),
    "number_ranges": ("nriv", {
        "object": _Col("object", _s(10), primary_key=True),
        "current": _Col("nrlevel", sa.BigInteger),
    }),
}  # fmt: skip


@dataclass(frozen=True)
class ErpTables:
    """The bound tables; ``table.c.<logical name>`` is the real column whatever it is called."""

    metadata: sa.MetaData
    materials: sa.Table
    stock: sa.Table
    documents: sa.Table
    postings: sa.Table
    number_ranges: sa.Table
    material_types: Mapping[str, str]

    def material_type(self, mtart: str | None) -> str:
        """The contract material type of an MTART, or ConfigError saying how to map it."""
        code = (mtart or "").strip()
        if code in self.material_types:
            return self.material_types[code]
        if code in MTART_FOR_TYPE:  # a replica that already stores the contract's own words
            return code
        raise ConfigError(
            f"material type (MTART) {code!r} has no contract material type; map it in the config, e.g. "
            f'erp.tables.materials."mtart.{code or "ZXXX"}": raw (one of raw, wip, finished, packaging, mro)'
        )


def build_tables(
    tables_mapping: Mapping[str, Mapping[str, str]] | None = None, *, schema: str | None = None, prefix: str = ""
) -> ErpTables:
    """Tables named by the mapping (SAP-like defaults), in ``schema`` and with ``prefix`` if given."""
    mapping = dict(tables_mapping or {})
    unknown = sorted(set(mapping) - set(LOGICAL_TABLES))
    if unknown:
        raise ConfigError(f"erp.tables: unknown logical table(s) {unknown}; use {sorted(LOGICAL_TABLES)}")
    metadata = sa.MetaData()
    tables: dict[str, sa.Table] = {}
    material_types = dict(DEFAULT_MTART)
    for logical, (default_name, columns) in LOGICAL_TABLES.items():
        overrides = dict(mapping.get(logical) or {})
        if logical == "materials":
            material_types.update(_mtart_overrides(overrides))
        real = overrides.pop("__table__", default_name)
        bad = sorted(set(overrides) - set(columns))
        if bad:
            raise ConfigError(f"erp.tables.{logical}: unknown column(s) {bad}; logical columns are {sorted(columns)}")
        table_schema, _, name = real.rpartition(".")
        cols = []
        for key, spec in columns.items():
            real_col = overrides.get(key, spec.default)
            if not real_col:
                if not spec.optional:
                    raise ConfigError(f"erp.tables.{logical}.{key} is required and cannot be mapped to ''")
                continue
            cols.append(
                sa.Column(real_col, spec.type_(), key=key, primary_key=spec.primary_key, nullable=spec.nullable)
            )
        tables[logical] = sa.Table(prefix + name, metadata, *cols, schema=table_schema or schema)
    docs = tables["documents"]
    # The readers scan documents by entry time (as-of and windows) and posting looks up ids.
    sa.Index(f"ix_{docs.name}_entry", docs.c.entry_timestamp)
    if "transaction_id" in docs.c:
        sa.Index(f"ix_{docs.name}_txid", docs.c.transaction_id)
    return ErpTables(metadata=metadata, material_types=material_types, **tables)


def _mtart_overrides(overrides: dict[str, str]) -> dict[str, str]:
    found = {}
    for key in [k for k in overrides if k.startswith("mtart.")]:
        value = overrides.pop(key)
        if value not in MTART_FOR_TYPE:
            raise ConfigError(f"erp.tables.materials.{key}={value!r}: use one of {sorted(MTART_FOR_TYPE)}")
        found[key.removeprefix("mtart.")] = value
    return found
