"""The Great Expectations 1.x suites of the hourly tables, and `validate`, which runs one on a DataFrame.

Great Expectations takes seconds to import, so it is imported inside the functions here and
only check runs pay for it. Its SQL datasource does not work on DuckDB: the checks read the
hour's rows into pandas and hand them to `validate`; whole-table invariants stay in SQL.

An expectation whose ``meta`` says ``{"severity": "warn"}`` only warns when it fails; every other
failure is an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, get_args

import pandas as pd

from invsync_pipeline.contract import MaterialType, Reason, SourceSystem, TargetSystem, TransactionType
from invsync_pipeline.table_schemas import column_names, required_columns

SOURCE_SYSTEMS = get_args(SourceSystem)
TARGET_SYSTEMS = get_args(TargetSystem)
MATERIAL_TYPES = get_args(MaterialType)
TRANSACTION_TYPES = get_args(TransactionType)
REASONS = get_args(Reason)
# Contract v1: these carry a quantity > 0; an adjustment is signed and never 0; a count is >= 0.
POSITIVE_QUANTITY_TYPES = ("receipt", "issue", "transfer")

# The tables the suites validate, with snapshots.<system>_inventory. Their columns and NOT NULL
# columns come from the DDL (invsync_pipeline.table_schemas), read when a suite is first built: a
# check fails when a table in the warehouse drifts from sql/schema/*.sql.
STAGED_EVENTS_TABLE = "staging.inventory_events"
LEDGER_TABLE = "ledger.transaction_ledger"

LEDGER_KEY = ("material_number", "material_type", "location", "unit", "source_system", "target_system")
LEDGER_UNSIGNED = ("receipts", "issues", "transfers_in", "transfers_out")
LEDGER_COUNTS = (
    "receipt_count", "issue_count", "transfer_in_count", "transfer_out_count", "adjustment_count",
    "cycle_count_count", "transaction_count",
)  # fmt: skip
# Computed by the check's query next to the table's own columns (exact DECIMAL arithmetic in DuckDB):
# net_movement minus its formula, and transaction_count minus the sum of the per-kind counts.
LEDGER_DERIVED = ("net_movement_residual", "transaction_count_residual")

SNAPSHOT_KEY = ("material_number", "location", "unit")
# The material type the stock rule goes by: the snapshot's own, else the ERP material master's
# (the MES snapshot has none of its own). Added by the check's query.
SNAPSHOT_DERIVED = ("stock_material_type",)
DEFAULT_NON_NEGATIVE_MATERIAL_TYPES = ("raw", "finished", "packaging")

WARN = {"severity": "warn"}
_UNEXPECTED_SAMPLE = 5


def staged_events_suite(hour_start: datetime, hour_end: datetime) -> list:
    """Contract v1 on the staged rows of one hour: schema, required fields, unique ids, enums, quantities."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=column_names(STAGED_EVENTS_TABLE), exact_match=True),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required_columns(STAGED_EVENTS_TABLE)),
        gxe.ExpectColumnValuesToBeUnique(column="transaction_id"),
        gxe.ExpectColumnValuesToBeInSet(column="source_system", value_set=list(SOURCE_SYSTEMS)),
        gxe.ExpectColumnValuesToBeInSet(column="target_system", value_set=list(TARGET_SYSTEMS)),
        gxe.ExpectColumnValuesToBeInSet(column="material_type", value_set=list(MATERIAL_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="transaction_type", value_set=list(TRANSACTION_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="reason", value_set=list(REASONS)),
        gxe.ExpectColumnValuesToBeBetween(
            column="quantity",
            min_value=0,
            strict_min=True,
            row_condition=Column("transaction_type").is_in(POSITIVE_QUANTITY_TYPES),
        ),  # fmt: skip
        gxe.ExpectColumnValuesToBeBetween(
            column="quantity", min_value=0, row_condition=Column("transaction_type") == "cycle_count"
        ),
        gxe.ExpectColumnValuesToNotBeInSet(
            column="quantity", value_set=[0], row_condition=Column("transaction_type") == "adjustment"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="to_location", row_condition=Column("transaction_type") == "transfer"),
        gxe.ExpectColumnValuesToNotBeNull(column="target_system", row_condition=Column("source_system") == "RECON"),
        gxe.ExpectColumnValuesToBeBetween(
            column="event_time", min_value=hour_start, max_value=hour_end, strict_max=True
        ),
    ]


def ledger_suite() -> list:
    """The ledger rows of one hour: schema, keys, the net-movement formula, non-negative sums and counts."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*column_names(LEDGER_TABLE), *LEDGER_DERIVED], exact_match=True),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required_columns(LEDGER_TABLE)),
        gxe.ExpectColumnValuesToNotBeNull(column="target_system", row_condition=Column("source_system") == "RECON"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(LEDGER_KEY), ignore_row_if="never"),
        gxe.ExpectColumnValuesToBeBetween(column="net_movement_residual", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="transaction_count_residual", min_value=0, max_value=0),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in (*LEDGER_UNSIGNED, *LEDGER_COUNTS)),
    ]


def snapshot_suite(system: str, non_negative_material_types: Sequence[str], *, expect_rows: bool) -> list:
    """A stock snapshot of one hour: schema, no nulls, one row per material x location x unit, and
    no negative stock for the material types that may not go negative (a warning, not an error).
    With ``expect_rows`` (the hour's ledger has movements) an empty snapshot fails."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    # The ERP may not know a material's type: the DDL leaves the ERP's material_type nullable.
    table = f"snapshots.{system}_inventory"
    suite = [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*column_names(table), *SNAPSHOT_DERIVED], exact_match=True),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required_columns(table)),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(SNAPSHOT_KEY), ignore_row_if="never"),
    ]
    if non_negative_material_types:
        protected = Column("stock_material_type").is_in(list(non_negative_material_types))
        suite += [
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, row_condition=protected, meta=dict(WARN))
            for c in ("begin_quantity", "end_quantity")
        ]
    if expect_rows:
        suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    return suite


@cache
def _pandas_source():
    """The pandas datasource of one ephemeral (in-memory) GX context per process: nothing goes to disk."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),  # tqdm bars would flood the run logs
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    return context.data_sources.add_pandas(name="invsync")


@cache
def _batch_definition(suite_name: str):
    """One DataFrame asset per suite; each validation hands it a new frame as a batch parameter."""
    asset = _pandas_source().add_dataframe_asset(name=suite_name)
    return asset.add_batch_definition_whole_dataframe(name=f"{suite_name}_frame")


def validate(df: pd.DataFrame, suite_name: str, expectations: Iterable) -> tuple[bool, dict[str, Any]]:
    """Runs the expectations on ``df`` as the suite ``suite_name``; returns (success, summary).

    The summary is JSON-able and small: per expectation its type, column(s), success, severity,
    unexpected count and up to five unexpected values (or the observed value for table-level
    expectations), plus any exception GX raised while evaluating it (which counts as a failure).
    """
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=suite_name, expectations=list(expectations))
    batch = _batch_definition(suite_name).get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    rows = [_summarize(r) for r in result.results]
    summary = {
        "suite": suite_name,
        "rows": len(df),
        "success": all(r["success"] for r in rows),
        "evaluated": len(rows),
        "failed": sum(not r["success"] for r in rows),
        "results": rows,
    }
    return summary["success"], summary


def failed(summary: dict[str, Any], severity: str | None = None) -> list[dict[str, Any]]:
    """The failed expectations of a summary, optionally only those of one severity ("error" | "warn")."""
    return [r for r in summary["results"] if not r["success"] and severity in (None, r["severity"])]


def _summarize(r) -> dict[str, Any]:
    config = r.expectation_config
    kwargs = config.kwargs
    res = r.result or {}
    exception = (r.exception_info or {}).get("exception_message") if _raised(r) else None
    row = {
        "expectation": config.type,
        "column": _columns(kwargs),
        "condition": _condition(kwargs.get("row_condition")),
        "success": bool(r.success) and exception is None,
        "severity": ((config.meta or {}).get("severity") or "error"),
        "unexpected_count": _jsonable(res.get("unexpected_count")),
        "unexpected_values": [_jsonable(v) for v in (res.get("partial_unexpected_list") or [])][:_UNEXPECTED_SAMPLE],
    }
    if "observed_value" in res and not row["success"]:
        row["observed_value"] = _jsonable(res["observed_value"])
    if exception:
        row["exception"] = str(exception)[:300]
    return row


def _raised(r) -> bool:
    info = r.exception_info or {}
    return bool(info.get("raised_exception"))


def _columns(kwargs: dict) -> str:
    if kwargs.get("column"):
        return kwargs["column"]
    if kwargs.get("column_list"):
        return ", ".join(kwargs["column_list"])
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']}, {kwargs['column_B']}"
    return "(table)"


def _condition(condition: Any) -> str | None:
    """A row condition as text, e.g. ``transaction_type IN ['receipt', 'issue']``."""
    if condition is None:
        return None
    if not isinstance(condition, dict):  # a Condition object; the kwargs usually hold its dict form
        condition = condition.dict() if hasattr(condition, "dict") else {"text": str(condition)}
    if "conditions" in condition:
        joiner = " or " if condition.get("type") == "or" else " and "
        return joiner.join(_condition(c) or "" for c in condition["conditions"])
    if "column" in condition and "operator" in condition:
        return f"{condition['column']['name']} {condition['operator']} {condition.get('parameter')!r}"
    if "column" in condition and "is_null" in condition:
        return f"{condition['column']['name']} is {'' if condition['is_null'] else 'not '}null"
    return str(condition.get("pass_through_filter") or condition.get("text") or condition)


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)
