"""The table schemas read from sql/schema/*.sql: equal to what DuckDB creates, and used by the assets and checks."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from invsync_pipeline import table_schemas
from invsync_pipeline.assets.ledger import LEDGER_TABLE, transaction_ledger
from invsync_pipeline.assets.staging import STAGED_EVENTS_TABLE, staged_inventory_events
from invsync_pipeline.checks import expectations as ex
from invsync_pipeline.table_schemas import SCHEMA_DIR, SchemaDeclarationError, column_names, columns, required_columns
from invsync_pipeline.warehouse import SCHEMA_FILES, ensure_schema


def _created_by_duckdb(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str, bool]]]:
    rows = conn.execute(
        """SELECT schema_name || '.' || table_name, column_name, data_type, is_nullable
           FROM duckdb_columns() WHERE NOT internal ORDER BY schema_name, table_name, column_index"""
    ).fetchall()
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    for table, name, data_type, nullable in rows:
        tables.setdefault(table, []).append((name, data_type, nullable))
    return tables


def test_every_table_reads_as_duckdb_creates_it_from_the_ddl(tmp_path):
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_schema(conn)
    for path in sorted(SCHEMA_DIR.glob("*.sql")):  # ops.sql: created by the flow_metrics asset itself
        if path.name not in SCHEMA_FILES:
            conn.execute(path.read_text())
    created = _created_by_duckdb(conn)

    # DuckDB spells a type its own way (TIMESTAMPTZ is TIMESTAMP WITH TIME ZONE): ask it for the declared ones.
    spelled = lambda declared: conn.execute(f"SELECT typeof(NULL::{declared})").fetchone()[0]  # noqa: E731
    declared = {
        table: [(c.name, spelled(c.type), c.nullable) for c in columns(table)] for table in created
    }  # fmt: skip
    assert declared == created
    assert set(table_schemas._declared_tables()) == set(created)
    conn.close()


def test_the_staging_and_ledger_assets_carry_their_column_schema_from_the_ddl():
    for asset, table in ((staged_inventory_events, STAGED_EVENTS_TABLE), (transaction_ledger, LEDGER_TABLE)):
        metadata = asset.specs_by_key[asset.key].metadata
        schema = metadata["dagster/column_schema"]

        assert metadata["dagster/table_name"] == table
        assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
            (c.name, c.type, c.nullable) for c in columns(table)
        ]


def test_column_descriptions_come_from_the_comments_on_the_ddl_lines():
    described = lambda table: {c.name: c.description for c in columns(table) if c.description}  # noqa: E731
    staged, ledger = described(STAGED_EVENTS_TABLE), described(LEDGER_TABLE)

    # Every column the asset metadata described before the DDL became the one declaration still is.
    assert {"partition_hour", "transaction_id", "event_time", "source_system", "target_system", "location",
            "to_location", "movement_type", "received_at", "segment_id"} <= staged.keys()  # fmt: skip
    assert {"target_system", "adjustments", "net_movement", "last_counted_balance"} <= ledger.keys()
    assert ledger["net_movement"] == "receipts - issues + transfers_in - transfers_out + adjustments"
    assert staged["source_system"] == "ERP | MES | RECON"
    assert "material_number" not in staged  # a column without a comment has no description
    descriptions = {c.name: c.description for c in staged_inventory_events.specs_by_key[
        staged_inventory_events.key].metadata["dagster/column_schema"].columns}  # fmt: skip
    assert descriptions["segment_id"] == staged["segment_id"]


def test_the_suites_expect_the_ddl_columns_and_its_not_null_columns():
    def expected(suite: list) -> tuple[set[str], set[str]]:
        """The columns a suite expects the table to have, and those it expects never null."""
        of_type = lambda name: [e for e in suite if e.expectation_type == name]  # noqa: E731
        (table_columns,) = of_type("expect_table_columns_to_match_set")
        not_null = {e.column for e in of_type("expect_column_values_to_not_be_null") if not e.row_condition}
        return set(table_columns.column_set), not_null

    hour = datetime(2026, 11, 24, 10, tzinfo=UTC)
    suites = {
        STAGED_EVENTS_TABLE: (ex.staged_events_suite(hour, hour + timedelta(hours=1)), ()),
        LEDGER_TABLE: (ex.ledger_suite(), ex.LEDGER_DERIVED),
        "snapshots.erp_inventory": (ex.snapshot_suite("erp", [], expect_rows=False), ex.SNAPSHOT_DERIVED),
        "snapshots.mes_inventory": (ex.snapshot_suite("mes", [], expect_rows=False), ex.SNAPSHOT_DERIVED),
    }
    for table, (suite, computed_by_the_check) in suites.items():
        assert expected(suite) == ({*column_names(table), *computed_by_the_check}, set(required_columns(table)))
    assert "material_type" not in required_columns("snapshots.erp_inventory")  # the ERP may not know it
    assert "target_system" not in required_columns(LEDGER_TABLE)


@pytest.mark.parametrize(
    ("ddl", "line", "message"),
    [
        ("CREATE TABLE s.t (\n    id VARCHAR PRIMARY KEY,\n    b INTEGER\n);\n", 2, "not a column of s.t"),
        ("CREATE TABLE s.t (\n    id VARCHAR NOT NULL,\n    id INTEGER\n);\n", 3, "id is declared twice"),
        ("CREATE TABLE s.t (\n    a VARCHAR\n);\nALTER TABLE s.t ADD COLUMN IF NOT EXISTS b INTEGER;\n", 4,
         "does not declare b INTEGER"),
        ("-- a comment\nCREATE VIEW s.v AS SELECT 1;\n", 2, "not a statement the column reader knows"),
        ("CREATE TABLE s.t (a VARCHAR);\n", 1, "not a statement the column reader knows"),
        ("CREATE TABLE s.t (\n    a VARCHAR\n", 1, "no closing `);`"),
    ],
)  # fmt: skip
def test_a_ddl_line_the_reader_cannot_read_fails_naming_the_file_and_line(tmp_path, ddl, line, message):
    path = tmp_path / "broken.sql"
    path.write_text(ddl)

    with pytest.raises(SchemaDeclarationError, match=re.escape(message)) as raised:
        table_schemas._read_file(path)
    assert f"{path}:{line}: " in str(raised.value)


def test_an_unknown_table_is_refused_with_the_declared_ones():
    with pytest.raises(LookupError, match=r"no CREATE TABLE staging\.nope .* staging\.inventory_events"):
        columns("staging.nope")


def test_importing_the_module_reads_nothing_and_a_read_needs_no_database():
    # The assets derive their column schema while being imported: that read must be cheap and must
    # succeed on every file (test_every_table_reads_as_duckdb_creates_it_from_the_ddl reads them all).
    code = (
        "import sys, invsync_pipeline.table_schemas as t; "
        "sys.exit(t._declared_tables.cache_info().currsize != 0 or t.table_schema.cache_info().currsize != 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

    tables = table_schemas._declared_tables.__wrapped__()  # uncached: a fresh read of every file (no timing asserted)
    assert STAGED_EVENTS_TABLE in tables and LEDGER_TABLE in tables
