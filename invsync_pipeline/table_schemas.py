"""The columns of the warehouse's tables, read from where they are declared: the CREATE TABLE
statements of sql/schema/*.sql.

Dagster's column schema of an asset and the column lists of the Great Expectations suites derive
from here, so a column changed in the DDL changes them too, with no second edit.

The files are read as text, not by DuckDB, because DuckDB drops ``--`` comments and the comment
at the end of a column line is the column's description. The reader knows the one layout the
files use, a column per line: ``name TYPE [NOT NULL][,] [-- description]``. On any other line it
stops and names the file and line instead of guessing; test_table_schemas checks that what it
reads equals what DuckDB creates from the same files. Nothing is read until a function here is
first called (the staging and ledger assets call table_schema while being imported; why, see
assets/staging.py); the files are then read once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from invsync_pipeline.settings import PROJECT_ROOT
from invsync_pipeline.warehouse import SQL_DIR

SCHEMA_DIR = SQL_DIR / "schema"

_IDENT = r"[a-z_][a-z0-9_]*"
_TYPE = r"[A-Z]+(?:\(\d+, ?\d+\))?(?:\[\])?"  # VARCHAR, DECIMAL(18,6), VARCHAR[]
_CREATE_TABLE = re.compile(rf"CREATE TABLE (?:IF NOT EXISTS )?(?P<table>{_IDENT}\.{_IDENT}) \($")
_COLUMN = re.compile(rf"(?P<name>{_IDENT}) +(?P<type>{_TYPE})(?P<not_null> +NOT NULL)? *,? *(?:-- *(?P<comment>.*?))?$")
_ADD_COLUMN = re.compile(
    rf"ALTER TABLE (?P<table>{_IDENT}\.{_IDENT}) ADD COLUMN IF NOT EXISTS (?P<name>{_IDENT}) (?P<type>{_TYPE});$"
)
_CREATE_SCHEMA = re.compile(rf"CREATE SCHEMA IF NOT EXISTS {_IDENT};$")
_LAYOUT = (
    "invsync_pipeline/table_schemas.py reads `CREATE TABLE [IF NOT EXISTS] schema.table (`, then one column "
    "per line as `name TYPE [NOT NULL], -- description`, then `);`; write the DDL that way or teach it the new form"
)


class SchemaDeclarationError(ValueError):
    """A line of sql/schema/*.sql that the column reader cannot read."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as written in the DDL, e.g. TIMESTAMPTZ or DECIMAL(18,6)
    nullable: bool
    description: str | None = None


def columns(table: str) -> list[Column]:
    """The columns of ``table`` (``schema.name``) in DDL order."""
    declared = _declared_tables()
    if table not in declared:
        raise LookupError(f"no CREATE TABLE {table} in {SCHEMA_DIR}; declared there: {', '.join(sorted(declared))}")
    return list(declared[table])


def column_names(table: str) -> list[str]:
    return [c.name for c in columns(table)]


def required_columns(table: str) -> list[str]:
    """The NOT NULL columns of ``table``."""
    return [c.name for c in columns(table) if not c.nullable]


@cache
def table_schema(table: str) -> dg.TableSchema:
    """``table``'s columns as Dagster metadata (``dagster/column_schema``), described by their DDL comments."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name, c.type, description=c.description, constraints=dg.TableColumnConstraints(nullable=c.nullable)
            )
            for c in columns(table)
        ]
    )


@cache
def _declared_tables() -> dict[str, tuple[Column, ...]]:
    tables: dict[str, tuple[Column, ...]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        for table, (cols, line) in _read_file(path).items():
            if table in tables:
                raise _unreadable(path, line, f"CREATE TABLE {table} (", "the table is created a second time")
            tables[table] = cols
    if not tables:
        raise FileNotFoundError(f"{SCHEMA_DIR} declares no tables; invsync runs from a checkout that has sql/schema/")
    return tables


def _read_file(path: Path) -> dict[str, tuple[tuple[Column, ...], int]]:
    """The tables one DDL file creates: their columns, and the line of their CREATE TABLE."""
    tables: dict[str, tuple[tuple[Column, ...], int]] = {}
    table: str | None = None  # the CREATE TABLE being read, opened on line `opened_at`
    opened_at = 0
    cols: list[Column] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("--"):
            continue
        if table is not None:
            if line == ");":
                tables[table], table = (tuple(cols), opened_at), None
            elif column := _COLUMN.match(line):
                if any(c.name == column["name"] for c in cols):
                    raise _unreadable(path, number, line, f"{column['name']} is declared twice in {table}")
                cols.append(Column(column["name"], column["type"], not column["not_null"], column["comment"] or None))
            else:
                raise _unreadable(path, number, line, f"not a column of {table}")
        elif create := _CREATE_TABLE.match(line):
            if create["table"] in tables:
                raise _unreadable(path, number, line, f"{create['table']} is created a second time")
            table, opened_at, cols = create["table"], number, []
        elif added := _ADD_COLUMN.match(line):
            # Brings a column to warehouses made before it existed; new ones get it from the CREATE
            # TABLE, which therefore has to declare it too, with the same type.
            declared = {c.name: c.type for c in tables.get(added["table"], ((), 0))[0]}
            if declared.get(added["name"]) != added["type"]:
                why = f"the CREATE TABLE {added['table']} above does not declare {added['name']} {added['type']}"
                raise _unreadable(path, number, line, why)
        elif not _CREATE_SCHEMA.match(line):
            raise _unreadable(path, number, line, "not a statement the column reader knows")
    if table is not None:
        raise _unreadable(path, opened_at, f"CREATE TABLE {table} (", "no closing `);` follows")
    return tables


def _unreadable(path: Path, number: int, line: str, why: str) -> SchemaDeclarationError:
    shown = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
    return SchemaDeclarationError(f"{shown}:{number}: {why}: {line!r}. {_LAYOUT}")
