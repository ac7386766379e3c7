"""Dagster's run, event-log and schedule storage on PostgreSQL (INVSYNC_DAGSTER_PG_URL).

scripts/dagster-home writes the instance's dagster.yaml with the PostgreSQL storage when the
variable is set (dagster-postgres.yaml); the demo's hours then run, stage and reconcile on that
instance, the ledger tap sensor's cursor is stored there the way the daemon stores it, and a
ranged backfill of the hours runs on it too. Each test gets a database of its own on the local
PostgreSQL, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("INVSYNC_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.fixture
def pg_dagster_home(tmp_path, monkeypatch) -> Iterator[str]:
    import psycopg

    name = f"dagster_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}).\nStart it with: {PG_START}", pytrace=False)
    admin.execute(f'CREATE DATABASE "{name}"')
    # psycopg2 named: dagster-postgres needs it (SQLAlchemy 2.1 defaults postgresql:// to psycopg 3, on which
    # dagster-postgres's NOTIFY fails).
    url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + f"/{name}"
    monkeypatch.setenv("INVSYNC_DAGSTER_PG_URL", url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    subprocess.run([str(ROOT / "scripts" / "dagster-home")], check=True, env=dict(os.environ))
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_hourly_runs_the_sensor_cursor_and_a_backfill_on_a_postgresql_instance(settings, topology, pg_dagster_home,
                                                                               monkeypatch):  # fmt: skip
    import dagster as dg

    from invsync_pipeline.definitions import defs
    from invsync_pipeline.reference.demo import run_demo
    from invsync_pipeline.resources import InvsyncResource
    from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor

    instance = dg.DagsterInstance.get()
    storages = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                           instance.schedule_storage)}  # fmt: skip
    assert storages == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # dagster.yaml, as under SQLite
    assert instance.event_log_storage.get_concurrency_info("duckdb_writer").slot_count == 1  # scripts/dagster-home

    # Two demo hours: the sensor's staging runs and the hourly reconciliations, on this instance.
    live = run_demo(hours=2, seed=3, log=lambda _: None)
    runs = dg.DagsterInstance.get().get_runs()
    hourly = [r for r in runs if r.job_name == "hourly_reconciliation"]
    assert sorted(r.tags["dagster/partition"] for r in hourly) == live.hours
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    materialized = instance.get_materialized_partitions(dg.AssetKey("inventory_variances"))
    assert set(live.hours) <= materialized

    # The sensor's cursor, stored where the daemon keeps it (`dagster sensor cursor --set` writes
    # it the same way) and read back by another process's instance.
    tick = ledger_tap_sensor(dg.build_sensor_context(instance=instance, resources={"invsync": InvsyncResource()}))
    assert tick.cursor
    subprocess.run([sys.executable, "-m", "dagster", "sensor", "cursor", "ledger_tap_sensor", "--set", tick.cursor,
                    "-w", str(ROOT / "workspace.yaml")], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    stored = [s for s in dg.DagsterInstance.get().all_instigator_state() if s.name == "ledger_tap_sensor"]
    assert [json.loads(s.instigator_data.cursor) for s in stored] == [json.loads(tick.cursor)]

    # A ranged backfill of both hours in one run (the hourly assets' single-run policy).
    job = defs.resolve_job_def("hourly_reconciliation")
    tags = {"dagster/asset_partition_range_start": live.hours[0], "dagster/asset_partition_range_end": live.hours[-1]}
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    assert job.execute_in_process(instance=instance, tags=tags, run_config=quiet).success
    ranged = [r for r in dg.DagsterInstance.get().get_runs() if r.tags.get("dagster/asset_partition_range_start")]
    assert len(ranged) == 1 and ranged[0].status == dg.DagsterRunStatus.SUCCESS
