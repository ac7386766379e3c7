"""`invsync cutover demo`: a compressed three-week shadow period, compared day by day, on the Dagster instance.

It runs in its own runtime dir (``<INVSYNC_HOME>/cutover``) with its own config file there
(shadow mode, the pilot stages of the period), so it never mixes with `invsync demo`'s ERP and
MES. The reference MES serves the live and the shadow namespace; the worker runs in shadow mode;
the batch sync copies the ERP to the live MES every two simulated hours. Then one run of the
`cutover_daily` job backfills every day of the period and evaluates `go_live_readiness`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from invsync_pipeline.messaging.topology import apply_topology, delete_topology
from invsync_pipeline.settings import load_settings

_CUTOVER_FILES = ("cutover.sqlite", "mes.shadow.sqlite", "invsync.yaml")


@dataclass
class CutoverDemoResult:
    home: Path
    config: Path
    days: list[str]
    trend: list[tuple[str, float | None, float | None]]  # day, event-driven accuracy, batch accuracy
    gate: str
    passed: bool
    chart: Path


def run_cutover_demo(*, days: int = 21, log=print) -> CutoverDemoResult:
    from invsync_pipeline.cutover.readiness import readiness, trend_svg
    from invsync_pipeline.definitions import build_defs
    from invsync_pipeline.reference.demo import dagster_instance, demo_config, demo_resources, reset_home
    from invsync_pipeline.reference.mes_client import ReferenceMesClient
    from invsync_pipeline.reference.mes_service import run_in_thread
    from invsync_pipeline.reference.shadow_period import ShadowPeriod, run_shadow_period
    from invsync_pipeline.reference.sim_run import BackgroundWorker
    from invsync_pipeline.warehouse import open_warehouse

    home = load_settings().home / "cutover"
    reset_home(home)
    for name in _CUTOVER_FILES:
        (home / name).unlink(missing_ok=True)
    token = secrets.token_urlsafe(24)  # the demo MES's own
    mes = run_in_thread(home / "mes.sqlite", token)
    period = ShadowPeriod(days=days, fix_day=min(7, days // 3), widen_day=min(14, 2 * days // 3) or None)
    pilot = [{"since": s.since.isoformat(), "material_types": list(s.material_types)} for s in period.pilot()]
    config_path = demo_config(home, mes.url, cutover={"initial_mode": "shadow", "pilot": pilot})
    settings = load_settings(config_path, home=str(home), mes={"base_url": mes.url})
    delete_topology(settings)
    apply_topology(settings)
    resources = demo_resources(config_path, home, mes.url, token)
    log(f"home {home}; reference MES at {mes.url} (live, and shadow at {settings.shadow_mes_url})")
    worker = BackgroundWorker(settings, ReferenceMesClient(mes.url, token)).start()
    try:
        log(f"simulating {days} days of shadow mode beside the batch sync (scrap unpublished until day "
            f"{period.fix_day}, raw joins the pilot on day {period.widen_day})")  # fmt: skip
        outcome = run_shadow_period(period, settings, worker, erp=resources["erp"], mes=resources["mes"])
        log(f"{outcome.events} movements, {outcome.lost_to_the_problem} lost to the early problem, "
            f"{outcome.batch_runs} batch syncs ({outcome.batch_postings} postings), {outcome.seeds} seeds")  # fmt: skip
        worker.stop()
        # The comparison reads the MES (both namespaces) as of each midnight; it stores what it read.
        keys = [(period.start + timedelta(days=d)).date().isoformat() for d in range(days)]
        job = build_defs(**resources).resolve_job_def("cutover_daily")
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        run = job.execute_in_process(instance=dagster_instance(), tags=tags, run_config=quiet, raise_on_error=False)
        if not run.success:
            raise RuntimeError("the cutover comparison run failed; see the run in `dagster dev`")
        log(f"compared {days} days in one run of cutover_daily")
    finally:
        worker.stop()
        mes.stop()
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        gate = readiness(conn, settings)
    chart = home / "reports" / "cutover_readiness.svg"
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(trend_svg(gate))
    trend = [(str(d), a, b) for d, a, b in zip(gate.trend["day"], gate.trend["accuracy"],
                                                gate.trend["batch_accuracy"], strict=True)]  # fmt: skip
    return CutoverDemoResult(home, config_path, keys, trend, gate.summary(), gate.passed, chart)
