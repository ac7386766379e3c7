"""A run that finds the warehouse locked by another process waits for it, then fails naming it.

DuckDB takes one process per file, and a read-only session left open (an analyst's) blocks the
writer too. The holder here is another process, as it is in life.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from invsync_pipeline.resources import WarehouseResource
from invsync_pipeline.warehouse import WarehouseBusy, connect_warehouse, open_warehouse
from invsync_pipeline_tests.recon_plant import set_config

HOLD = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


def _hold(path, seconds: float) -> subprocess.Popen:
    """Another process with a read-only session on the file for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


@pytest.fixture
def warehouse_file(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with open_warehouse(path):
        pass
    return path


def test_a_run_waits_for_a_reader_that_lets_go(warehouse_file):
    holder = _hold(warehouse_file, 2)
    started = time.monotonic()
    conn = connect_warehouse(warehouse_file, lock_wait_seconds=60)
    waited = time.monotonic() - started
    conn.execute("CREATE TABLE written_after_the_wait AS SELECT 1 AS x")
    conn.close()
    holder.wait(30)
    assert waited > 0.5  # it did wait for the holder, and then got the file


def test_a_reader_that_never_lets_go_fails_the_run_naming_the_holder_and_the_setting(warehouse_file):
    holder = _hold(warehouse_file, 60)
    try:
        with pytest.raises(WarehouseBusy) as busy:
            connect_warehouse(warehouse_file, lock_wait_seconds=1)
    finally:
        holder.kill()
    message = str(busy.value)
    assert f"PID {holder.pid}" in message and "duckdb.lock_wait_seconds" in message and "analyst.duckdb" in message


def test_the_run_resource_waits_as_long_as_the_settings_say(warehouse_file, settings, monkeypatch):
    set_config(Path(os.environ["INVSYNC_CONFIG"]), duckdb={"lock_wait_seconds": 60})
    resource = WarehouseResource(path=str(warehouse_file))
    resource.setup_for_execution(None)
    holder = _hold(warehouse_file, 2)
    try:
        with resource.connect() as conn:
            conn.execute("SELECT 1").fetchall()
    finally:
        resource.teardown_after_execution(None)
        holder.wait(30)


def test_an_analysts_open_session_on_analyst_db_blocks_no_export(tmp_path):
    import duckdb

    from invsync_pipeline.assets.exports import write_analyst_db

    exports = tmp_path / "exports"

    def export_hour(hour: str) -> None:  # as analyst_exports lays out an hour of a table
        folder = exports / "recon.variances" / f"hour={hour}"
        folder.mkdir(parents=True)
        duckdb.sql(f"COPY (SELECT TIMESTAMPTZ '{hour}:00:00Z' AS partition_hour, true AS is_variance) "
                   f"TO '{folder / 'data.parquet'}' (FORMAT parquet)")  # fmt: skip

    export_hour("2026-12-01T08")
    target = write_analyst_db(exports, tmp_path / "analyst.duckdb")
    holder = _hold(target, 60)  # an analyst's session, left open
    try:
        export_hour("2026-12-01T09")
        write_analyst_db(exports, target)  # the next run's export: no lock in its way
        with duckdb.connect(str(target), read_only=True) as conn:
            assert conn.execute("SELECT count(*), count(*) FILTER (is_variance) FROM recon.variances").fetchone() == (
                2,
                2,
            )
    finally:
        holder.kill()
