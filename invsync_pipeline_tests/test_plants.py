"""Plants on their own: each plant a code location with its own asset keys, writer pool, DuckDB
file and ledger tap, so plants reconcile at once and one plant's failure blocks no other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from invsync_pipeline.settings import ConfigError, load_settings

BENCH = Path(__file__).resolve().parents[1] / "bench"

# What a plant's code location reports about its definitions: asset keys, the pools of their
# ops, and the job names (the same in every location: jobs are per location).
DESCRIBE = """
import json
from invsync_pipeline.definitions import defs
nodes = [*defs.assets, *defs.asset_checks]
print(json.dumps({"keys": sorted(k.to_user_string() for a in defs.assets for k in a.keys),
                  "pools": sorted({a.op.pool for a in nodes if a.op.pool}),
                  "jobs": sorted(j.name for j in defs.resolve_all_job_defs())}))
"""


@pytest.fixture
def two_plants(settings, tmp_path, monkeypatch):
    """The test config with plants reconciled on their own, WH02 with its own MES."""
    config = yaml.safe_load(Path(os.environ["INVSYNC_CONFIG"]).read_text())
    config["topology"]["tap_per_plant"] = True
    config["topology"]["plants"][1]["mes_url"] = "http://mes-wh02.example:8765"
    config["duckdb"]["lock_wait_seconds"] = 3  # a run waits this long for a held file, then fails
    path = tmp_path / "plants.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("INVSYNC_CONFIG", str(path))
    return load_settings()


def _describe(plant: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "INVSYNC_PLANT"}
    if plant:
        env["INVSYNC_PLANT"] = plant
    done = subprocess.run([sys.executable, "-c", DESCRIBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_plants_code_location_has_its_own_asset_keys_and_writer_pool(two_plants):
    alone = _describe(None)
    wh02 = _describe("WH02")
    assert "inventory_variances" in alone["keys"] and alone["pools"] == ["duckdb_writer"]
    assert wh02["keys"] == sorted(f"wh02/{key}" for key in alone["keys"])
    assert wh02["pools"] == ["duckdb_writer.wh02"]
    assert wh02["jobs"] == alone["jobs"]  # one location per plant: the same jobs, sensors and schedules


def test_each_plant_has_its_own_files_and_mes_and_shares_the_home(two_plants):
    wh01, wh02 = (load_settings(plant=p) for p in ("WH01", "WH02"))
    assert wh01.warehouse_path != wh02.warehouse_path != two_plants.warehouse_path
    assert wh02.warehouse_path == two_plants.home / "plants" / "WH02" / "warehouse.duckdb"
    assert wh01.staged_dir != wh02.staged_dir and wh01.exports_dir != wh02.exports_dir
    assert wh01.analyst_db_path == wh02.analyst_db_path == two_plants.analyst_db_path  # analysts see every plant
    assert wh01.erp_url == wh02.erp_url  # one ERP for the company
    assert wh02.mes_url == "http://mes-wh02.example:8765" and wh01.mes_url == two_plants.mes.base_url


def test_a_plants_sync_worker_consumes_only_its_plants_queues(two_plants):
    from invsync_pipeline.sync.queues import plant_queues

    every = plant_queues(two_plants)
    critical, noncritical = plant_queues(load_settings(plant="WH02"))
    assert critical and noncritical
    assert all(".wh02." in q for q in critical + noncritical)
    assert set(critical) | set(noncritical) < set(every[0]) | set(every[1])


def test_an_unknown_plant_is_refused_naming_the_known_ones(two_plants, monkeypatch):
    monkeypatch.setenv("INVSYNC_PLANT", "WH09")
    with pytest.raises(ConfigError, match=r"plant='WH09'.*\(from INVSYNC_PLANT\).*known: WH01, WH02"):
        load_settings()


@pytest.mark.broker
def test_each_plant_drains_only_its_own_movements_from_its_own_tap(two_plants, connection):
    from invsync_pipeline.messaging.drain import drain_ledger_tap
    from invsync_pipeline.messaging.staged_log import StagedEventLog
    from invsync_pipeline.messaging.topology import apply_topology, delete_topology
    from invsync_pipeline_tests.factories import event, publish_events

    topo = apply_topology(two_plants, connection)
    try:
        assert {q.name for q in topo.queues if q.role == "tap"} == {
            two_plants.name("ledger.tap.wh01"), two_plants.name("ledger.tap.wh02")}  # fmt: skip
        wh01 = [event(location="WH01/RM01") for _ in range(30)]
        wh02 = [event(location="WH02/RM01") for _ in range(20)]
        publish_events(connection, topo.exchange, wh01 + wh02)
        with pytest.raises(ValueError, match="INVSYNC_PLANT"):
            drain_ledger_tap(two_plants)  # no plant: no tap of its own to drain
        staged = {}
        for plant in ("WH01", "WH02"):
            scoped = load_settings(plant=plant)
            assert drain_ledger_tap(scoped).staged == (30 if plant == "WH01" else 20)
            log = StagedEventLog(scoped.staged_dir)
            staged[plant] = {json.loads(line)["transaction_id"] for path in log.root.rglob("*.jsonl")
                             for line in path.read_text().splitlines()}  # fmt: skip
        assert staged["WH01"] == {e["transaction_id"] for e in wh01}
        assert staged["WH02"] == {e["transaction_id"] for e in wh02}
    finally:
        delete_topology(two_plants, connection)


def test_plants_reconcile_at_once_and_a_plant_whose_file_is_held_blocks_no_other(two_plants, tmp_path):
    """Both plants' reconciliations run together in their own processes and files; WH01's file
    held by another process (a run that hung) fails WH01's run after its wait, WH02's succeeds.
    Each run materializes the plant's own assets (bench/plants.py's part)."""
    sys.path.insert(0, str(BENCH))
    try:
        from _reconcile_data import generate
    finally:
        sys.path.remove(str(BENCH))
    paths = {p: load_settings(plant=p).warehouse_path for p in ("WH01", "WH02")}
    for path in paths.values():
        path.parent.mkdir(parents=True)
    generate(paths["WH02"], 200)
    paths["WH01"].write_bytes(paths["WH02"].read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(600)", str(paths["WH01"])],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        runs = {p: subprocess.Popen([sys.executable, str(BENCH / "plants.py"), "--part", "reconcile"],
                                    env={**os.environ, "INVSYNC_PLANT": p}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for p in ("WH01", "WH02")}  # fmt: skip
        outcome = {p: (*proc.communicate(timeout=300), proc.returncode) for p, proc in runs.items()}
    finally:
        holder.kill()
        holder.wait()
    out, err, code = outcome["WH02"]
    assert code == 0, err[-2000:]
    done = json.loads(out.strip().splitlines()[-1])
    assert done["plant"] == "WH02" and done["pool"] == "duckdb_writer.wh02"
    assert done["keys"] == ["wh02/inventory_variances", "wh02/variance_investigation"]
    out, err, code = outcome["WH01"]
    assert code != 0 and "lock" in err.lower(), err[-2000:]
    with duckdb.connect(str(paths["WH02"]), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM recon.variances").fetchone()[0] >= 200


def test_analyst_db_shows_every_plants_rows_with_its_plant(two_plants, tmp_path):
    from invsync_pipeline.assets.exports import export_roots, write_analyst_db

    for plant, n in (("WH01", 2), ("WH02", 3)):
        folder = load_settings(plant=plant).exports_dir / "recon.variances" / "hour=2026-12-01T08"
        folder.mkdir(parents=True)
        duckdb.sql(f"COPY (SELECT TIMESTAMPTZ '2026-12-01 08:00:00Z' AS partition_hour, i AS n FROM range({n}) t(i)) "
                   f"TO '{folder / 'data.parquet'}' (FORMAT parquet)")  # fmt: skip
    scoped = load_settings(plant="WH02")
    target = write_analyst_db(export_roots(scoped), scoped.analyst_db_path)
    with duckdb.connect(str(target), read_only=True) as conn:
        rows = conn.execute("SELECT plant, count(*) FROM recon.variances GROUP BY ALL ORDER BY 1").fetchall()
    assert rows == [("WH01", 2), ("WH02", 3)]


def test_a_plants_runs_take_the_duckdb_threads_it_is_given(two_plants, monkeypatch):
    """Plants sharing a machine give each run its share of cores (duckdb.threads)."""
    from invsync_pipeline.resources import WarehouseResource

    monkeypatch.setenv("INVSYNC_DUCKDB_THREADS", "1")
    assert load_settings().duckdb.threads == 1
    resource = WarehouseResource(path=str(load_settings(plant="WH01").warehouse_path))
    resource.setup_for_execution(None)  # as inside a run: the run's one connection
    try:
        with resource.connect() as conn:
            assert conn.execute("SELECT current_setting('threads')").fetchone()[0] == 1
    finally:
        resource.teardown_after_execution(None)
