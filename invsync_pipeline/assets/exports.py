"""analyst_exports: the hour's tables as Parquet files, so analysts can query while runs write,
and ``analyst.duckdb`` beside them: a small DuckDB file of views over those files."""

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from invsync_pipeline.assets.corrections import correction_audit_log
from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, hourly_asset
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.settings import Settings

EXPORTED_TABLES = (
    "staging.inventory_events",
    "ledger.transaction_ledger",
    "snapshots.erp_inventory",
    "snapshots.mes_inventory",
    "recon.variances",
    "recon.variance_investigation",
    "recon.corrections",
    "recon.correction_audit_log",
)


@hourly_asset(
    deps=[correction_audit_log],
    group_name="reconciliation",
    kinds={"duckdb", "parquet"},
)
def analyst_exports(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The hour's rows of every analyst table as Parquet under INVSYNC_HOME/exports.

    DuckDB lets one process write its file at a time, and the pipeline's runs are that process.
    Analysts query these files instead, at any time, from DuckDB, pandas or a BI tool:
    `SELECT * FROM read_parquet('exports/recon.variances/*/*.parquet', hive_partitioning = true)`.
    One folder per table and one per hour (`hour=YYYY-MM-DDTHH`); a re-run replaces the hour's file."""
    run_hours = chunk_bounds(context.partition_keys)
    return each_chunk(context, lambda keys: _analyst_exports_hours(keys, run_hours, invsync, warehouse))


def _analyst_exports_hours(
    partition_keys: Sequence[str],
    run_hours: tuple[datetime, datetime],
    invsync: InvsyncResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Exports the consecutive hours ``partition_keys`` (one, or a chunk), then any hour outside
    the run's hours ``run_hours`` whose rows changed after its files were written: movements
    staged late (or re-sent by a correction) for it, a correction of it approved, rejected or
    resolved since. The run's own hours are left to their chunks: every step before this one has
    finished, so their rows no longer change (a re-run backfill, whose staging touched every hour
    of the range, re-exported the whole range once per chunk)."""
    first, last = chunk_bounds(partition_keys)
    root = invsync.settings().exports_dir
    root.mkdir(parents=True, exist_ok=True)
    # Scratch folders of a run that was killed mid-export (runs that export never overlap: the
    # DuckDB writer pool lets one run at a time).
    for stale in root.glob(".export-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with warehouse.connect(read_only=True) as conn:
        counts = {table: _export(conn, root, table, first, last) for table in EXPORTED_TABLES}
        refreshed = 0
        for table, hour in _changed_since_export(conn, root, *run_hours):
            counts[table] += _export(conn, root, table, hour, hour)
            refreshed += 1
    settings = invsync.settings()
    analyst_db = write_analyst_db(export_roots(settings), settings.analyst_db_path)
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(root)),
            "analyst_db": dg.MetadataValue.path(str(analyst_db)),
            "rows": dg.MetadataValue.md(
                "| table | rows |\n|---|---|\n" + "".join(f"| {t} | {n} |\n" for t, n in counts.items())
            ),
            "earlier_hours_exported_again": refreshed,
        }
    )


def _export(conn, root: Path, table: str, first: datetime, last: datetime) -> int:
    """One COPY of the consecutive hours first..last of ``table``, split into the hours' folders
    by DuckDB, then each file moved into place (a reader sees the old file or the new one, never
    half of one). The number of rows written."""
    hours = [f"{first + timedelta(hours=n):%Y-%m-%dT%H}" for n in range(int((last - first) / timedelta(hours=1)) + 1)]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=root) as scratch:
        written = Path(scratch) / "hours"
        # COPY takes no bound parameters; the values are datetimes we formatted ourselves.
        # It answers with the number of rows it wrote.
        rows = conn.execute(
            f"COPY (SELECT *, strftime(partition_hour, '%Y-%m-%dT%H') AS hour FROM {table} "
            f"WHERE partition_hour BETWEEN TIMESTAMPTZ '{first.isoformat()}' "
            f"AND TIMESTAMPTZ '{last.isoformat()}') "
            f"TO '{written}' (FORMAT parquet, PARTITION_BY (hour), WRITE_PARTITION_COLUMNS false)"
        ).fetchone()[0]
        files = {hour: sorted((written / f"hour={hour}").glob("*.parquet")) for hour in hours}
        if many := {hour: len(made) for hour, made in files.items() if len(made) > 1}:
            raise RuntimeError(f"{table}: DuckDB wrote more than one file for an hour {many}; nothing replaced")
        if any(not made for made in files.values()):
            # An hour without rows still gets a file, with the table's columns.
            empty = Path(scratch) / "empty.parquet"
            conn.execute(f"COPY (SELECT * FROM {table} WHERE false) TO '{empty}' (FORMAT parquet)")
            for hour in (hour for hour, made in files.items() if not made):
                files[hour] = [Path(scratch) / f"{hour}.parquet"]
                shutil.copyfile(empty, files[hour][0])
        for hour, (made,) in files.items():
            folder = root / table / f"hour={hour}"
            folder.mkdir(parents=True, exist_ok=True)
            made.replace(folder / "data.parquet")
    return rows


# When an hour's rows of each table last changed: its segments loaded, its corrections acted on.
_CHANGED = {
    "staging.inventory_events": "SELECT partition_hour, max(loaded_at) FROM staging.loaded_segments GROUP BY ALL",
    "ledger.transaction_ledger": "SELECT partition_hour, max(loaded_at) FROM staging.loaded_segments GROUP BY ALL",
    "recon.corrections": "SELECT partition_hour, max(logged_at) FROM recon.correction_audit_log GROUP BY ALL",
    "recon.correction_audit_log": "SELECT partition_hour, max(logged_at) FROM recon.correction_audit_log GROUP BY ALL",
}


def _changed_since_export(conn, root: Path, first: datetime, last: datetime) -> list[tuple[str, datetime]]:
    """(table, hour) of hours outside first..last exported before, whose rows changed since."""
    stale = []
    for table, query in _CHANGED.items():
        for hour, changed in conn.execute(query).fetchall():
            if first <= hour <= last or changed is None:
                continue
            path = root / table / f"hour={hour:%Y-%m-%dT%H}" / "data.parquet"
            if path.exists() and datetime.fromtimestamp(path.stat().st_mtime, UTC) < changed:
                stale.append((table, hour))
    return sorted(stale, key=lambda item: (item[1], item[0]))


def export_roots(settings: Settings) -> Path | dict[str, Path]:
    """The exports analyst.duckdb reads: this deployment's folder, or, where plants reconcile
    on their own (``plant`` set), every plant's folder under the shared home by plant."""
    if settings.plant is None:
        return settings.exports_dir
    return {p.name: p / "exports" for p in sorted((settings.home / "plants").glob("*")) if (p / "exports").is_dir()}


def write_analyst_db(exports: Path | Mapping[str, Path], target: Path) -> Path:
    """``target``: a DuckDB file with one view per exported table (same schema and name, e.g.
    ``recon.variances``) over its Parquet files, every hour, so analysts open it at any time and
    query the tables by name. ``exports`` is one folder, or one per plant (plant -> folder):
    then each view reads every plant's files and says which in a ``plant`` column. It holds no
    data and no run ever opens it: an analyst's session on it blocks nothing. Written whole
    beside it and moved into place; a session open on the old file keeps it until closed."""
    roots = {None: exports} if isinstance(exports, Path) else dict(exports)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    scratch.unlink(missing_ok=True)
    conn = duckdb.connect(str(scratch))
    try:
        for table in EXPORTED_TABLES:
            have = {plant: root / table for plant, root in roots.items() if any((root / table).glob("*/*.parquet"))}
            if not have:
                continue
            files = ", ".join("'" + str(folder.resolve() / "*" / "*.parquet").replace("'", "''") + "'"
                              for folder in have.values())  # fmt: skip
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
            # union_by_name: an hour exported before a column existed reads it as NULL.
            if None in roots:
                conn.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (hour) FROM read_parquet([{files}], "
                             "hive_partitioning = true, union_by_name = true)")  # fmt: skip
            else:
                # The plant is the folder under plants/ that the file came from.
                conn.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (hour, filename), "
                             "regexp_extract(filename, '/plants/([^/]+)/exports/', 1) AS plant "
                             f"FROM read_parquet([{files}], hive_partitioning = true, union_by_name = true, "
                             "filename = true)")  # fmt: skip
    finally:
        conn.close()
    os.replace(scratch, target)
    return target
