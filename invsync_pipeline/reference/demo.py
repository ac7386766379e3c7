"""`invsync demo`: the whole product on the embedded defaults, scored against the injected faults.

It starts the reference MES and the sync worker, seeds the ERP, simulates a few past hours of a
plant with injected faults through RabbitMQ, ticks the ledger tap sensor (which drains the tap
and asks for runs), runs the hourly reconciliation job for each hour in order on the Dagster
instance (DAGSTER_HOME, so `dagster dev` shows the runs afterwards), and compares what the
investigation found with the ground truth.
"""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import yaml

from invsync_pipeline.messaging.topology import apply_topology, delete_topology
from invsync_pipeline.settings import Settings, config_file, dagster_home, load_settings

# Runtime files of a home that the demo starts afresh (the Dagster instance is kept).
_RESET = ("staged", "reports", "exports", "warehouse.duckdb", "warehouse.duckdb.wal", "erp.sqlite", "mes.sqlite",
          "outbox.sqlite", "mes-outbox.sqlite", "sync.sqlite", "simulation.sqlite", "ops.sqlite")  # fmt: skip


@dataclass
class DemoResult:
    hours: list[str]
    report_html: Path | None
    warehouse: Path
    score: dict[str, int]
    findings: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def reset_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for name in _RESET:
        for path in home.glob(f"{name}*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def dagster_instance() -> dg.DagsterInstance:
    if (home := dagster_home()) is not None:
        home.mkdir(parents=True, exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def score(truth: pd.DataFrame, findings: pd.DataFrame, corrections: pd.DataFrame) -> dict[str, int]:
    """Injected (faults that must leave a variance), detected, misclassified, false positives
    (findings no fault explains), corrected (applied or approved) and held for review."""
    must_show = truth[truth["acceptable_causes"].map(lambda causes: "none" not in causes)]
    fault_tx: dict[str, set[str]] = {}
    fault_causes: dict[str, set[str]] = {}
    for row in must_show.itertuples(index=False):
        fault_tx.setdefault(row.fault_id, set()).update(row.transaction_ids)
        fault_causes.setdefault(row.fault_id, set()).update(row.acceptable_causes)
    all_fault_tx = {tx for row in truth.itertuples(index=False) for tx in row.transaction_ids}
    found = findings[findings["cause"] != "carried_over"]
    detected = misclassified = 0
    for fault_id, txs in fault_tx.items():
        hits = found[found["transaction_ids"].map(lambda ids, txs=txs: bool(txs & set(ids)))]
        if len(hits):
            detected += 1
            if not set(hits["cause"]) <= fault_causes[fault_id]:
                misclassified += 1
    stray = found[found["transaction_ids"].map(lambda ids: not (set(ids) & all_fault_tx))]
    false_positives = len(stray[["partition_hour", "material_number", "location", "unit"]].drop_duplicates())
    status = corrections["status"] if len(corrections) else pd.Series(dtype=object)
    return {
        "injected": len(fault_tx),
        "detected": detected,
        "misclassified": misclassified,
        "false_positives": false_positives,
        "corrected": int(status.isin(["applied", "approved"]).sum()),
        "held_for_review": int((status == "held_for_review").sum()),
    }


def demo_config(home: Path, mes_url: str | None = None, **sections: dict) -> Path:
    """``<home>/invsync.yaml``: the config in use (INVSYNC_CONFIG or data/invsync.yaml) with the
    demo's broker namespace (unless INVSYNC_NAMESPACE names another), the demo's MES, and
    ``sections``. The demos steer the pipeline through this file, never through os.environ."""
    source = config_file()
    config = (yaml.safe_load(source.read_text()) or {}) if source.exists() else {}
    config.setdefault("namespace", "demo.")
    if mes_url:
        config["mes"] = {**(config.get("mes") or {}), "base_url": mes_url}
    for name, values in sections.items():
        config[name] = {**(config.get(name) or {}), **values}
    path = home / "invsync.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def demo_resources(config_path: Path, home: Path, mes_url: str, token: str) -> dict[str, dg.ConfigurableResource]:
    """The resources of a demo's runs: its config file and home, its ERP tables and its MES (the
    token is the demo MES's own, handed in, not read from the environment)."""
    from invsync_pipeline.resources import ErpResource, InvsyncResource, MesResource, WarehouseResource

    path = str(config_path)
    return {
        "invsync": InvsyncResource(config_path=path, home=str(home)),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "erp": ErpResource(config_path=path, url=f"sqlite:///{home / 'erp.sqlite'}"),
        "mes": MesResource(config_path=path, base_url=mes_url, token=token),
    }


def run_demo(
    *, hours: int = 3, seed: int = 7, plant_size: str = "small", faults: str = "default", log=print
) -> DemoResult:
    from invsync_pipeline.definitions import build_defs
    from invsync_pipeline.partitions import hour_bounds
    from invsync_pipeline.reference.ground_truth import ground_truth
    from invsync_pipeline.reference.mes_client import ReferenceMesClient
    from invsync_pipeline.reference.mes_publisher import MesPublisher
    from invsync_pipeline.reference.mes_service import run_in_thread
    from invsync_pipeline.reference.sim_plan import generate
    from invsync_pipeline.reference.sim_run import BackgroundWorker, run
    from invsync_pipeline.reference.simulator import default_start
    from invsync_pipeline.sensors.ledger_tap import ledger_tap_sensor
    from invsync_pipeline.sources.erp import ErpDatabase
    from invsync_pipeline.warehouse import open_warehouse

    home = load_settings().home
    reset_home(home)
    token = secrets.token_urlsafe(24)  # the demo MES's own
    # The demo's MES publishes its backflushes on the demo's namespace: its config comes first.
    config_path = demo_config(home)
    settings: Settings = load_settings(config_path, home=str(home))
    delete_topology(settings)  # the demo's own namespace: start from empty queues
    apply_topology(settings)
    log(f"home {home}, broker namespace {settings.namespace!r}")

    mes = run_in_thread(home / "mes.sqlite", token, publish=MesPublisher(settings))
    config_path = demo_config(home, mes_url=mes.url)
    settings = load_settings(config_path, home=str(home), mes={"base_url": mes.url})
    resources = demo_resources(config_path, home, mes.url, token)
    defs = build_defs(**resources)
    client = ReferenceMesClient(mes.url, token)
    erp = ErpDatabase(f"sqlite:///{home / 'erp.sqlite'}", settings.erp.tables)
    erp.create_schema()
    worker = BackgroundWorker(settings, client).start()
    instance = dagster_instance()
    try:
        sim = generate(seed, default_start(hours), hours, plant_size, faults)
        log(f"reference MES at {mes.url}; simulating {hours} h of plant {plant_size!r} (seed {seed}), "
            f"faults: {sim.faults_by_type()}")  # fmt: skip
        result = run(sim, settings, client, erp=erp, worker=worker)
        log(f"{result.events} movements: {result.erp_postings} ERP postings, {result.backflushes} MES backflushes, "
            f"{result.published} messages published; the worker applied them to the MES")  # fmt: skip

        stage_job = defs.resolve_job_def("stage_and_ledger")
        recon_job = defs.resolve_job_def("hourly_reconciliation")
        # The runs' step-by-step log stays in the Dagster instance (dagster dev shows it), not here.
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        cursor = None

        def tick() -> None:
            nonlocal cursor
            ctx = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"invsync": resources["invsync"]})
            tick_result = ledger_tap_sensor(ctx)
            cursor = tick_result.cursor
            for request in tick_result.run_requests:
                stage_job.execute_in_process(partition_key=request.partition_key, instance=instance, run_config=quiet,
                                             tags={**request.tags, "invsync/source": "demo sensor tick"})  # fmt: skip

        tick()
        keys = [(sim.start + timedelta(hours=h)).strftime("%Y-%m-%d-%H:00") for h in range(hours)]
        config = {**quiet, "ops": {"auto_corrections": {"config": {"effective_at": "next_hour_start"}}}}
        for key in keys:
            outcome = recon_job.execute_in_process(partition_key=key, instance=instance, run_config=config,
                                                   raise_on_error=False)  # fmt: skip
            if not outcome.success:
                raise RuntimeError(f"the reconciliation of {key} failed; see the run in `dagster dev`")
            log(f"reconciled {key}")
            # Corrections of this hour take effect at the next hour's start: let the worker apply
            # them and the sensor stage them before that hour is reconciled.
            worker.wait_for(worker.handled, timeout=120)
            time.sleep(0.5)
            tick()

        start, _ = hour_bounds(keys[0])
        with open_warehouse(settings.warehouse_path, read_only=True) as conn:
            findings = conn.execute(
                "SELECT * FROM recon.variance_investigation WHERE partition_hour >= ? ORDER BY ALL", [start]
            ).df()
            corrections = conn.execute("SELECT * FROM recon.corrections").df()
        truth = ground_truth(settings, result.run_id)
        scored = score(truth, findings, corrections)
    finally:
        worker.stop()
        client.close()
        erp.dispose()
        mes.stop()
    report = settings.home / "reports" / "latest.html"
    return DemoResult(keys, report if report.exists() else None, settings.warehouse_path, scored, findings)


def describe(result: DemoResult) -> list[str]:
    lines = [f"reconciled hours: {', '.join(result.hours)}", f"warehouse: {result.warehouse}"]
    if result.report_html:
        lines.append(f"report: {result.report_html}")
    by_cause = result.findings.groupby(["cause", "system"]).size() if len(result.findings) else {}
    for (cause, system), n in dict(by_cause).items():
        lines.append(f"  {n:>3} finding(s): {cause} ({system} books miss the movement)")
    s = result.score
    lines.append(
        f"injected {s['injected']} faults that leave a variance; detected {s['detected']}, "
        f"misclassified {s['misclassified']}, false positives {s['false_positives']}; "
        f"corrected {s['corrected']}, held for review {s['held_for_review']} "
        "(invsync review serve, or invsync review list)"
    )
    return lines


def as_json_line(result: DemoResult) -> dict[str, Any]:
    return dict(result.score)
