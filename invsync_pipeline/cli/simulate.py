"""`invsync simulate` and `invsync demo`: the reference plant with injected faults, and the whole pipeline on it."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from invsync_pipeline.cli.options import UTC_HOUR, settings


@click.command("simulate")
@click.option("--hours", type=click.IntRange(1), default=2, show_default=True, help="Simulated hours.")
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed gives the same events.")
@click.option("--start", type=UTC_HOUR,
              help="First hour in UTC, e.g. 2026-11-24T08:00Z (default: the last --hours full hours).")  # fmt: skip
@click.option("--faults", default="default", show_default=True, help="default, none, or a YAML fault profile.")
@click.option("--plant-size", type=click.Choice(["small", "medium"]), default="small", show_default=True)
@click.option("--embedded-mes", is_flag=True, help="Run the reference MES in this process (the default).")
@click.option("--mes-url", help="Use the MES running there (token: INVSYNC_MES_TOKEN), e.g. `invsync mes serve`.")
@click.option("--with-worker/--no-worker", default=True, show_default=True,
              help="Run the sync worker until the plant queues are drained.")  # fmt: skip
@click.option("--verify", is_flag=True,
              help="Compare ERP and MES stock; exit 1 if a material-location without a fault differs.")  # fmt: skip
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the worker to catch up at each checkpoint.")  # fmt: skip
@click.pass_context
def simulate(ctx: click.Context, hours: int, seed: int, start: datetime | None, faults: str, plant_size: str,
             embedded_mes: bool, mes_url: str | None, with_worker: bool, verify: bool,
             timeout: float) -> None:  # fmt: skip
    """Simulate plant hours: ERP postings and MES backflushes with injected faults, and their ground truth."""
    from invsync_pipeline.reference.simulator import simulate as run_simulation

    if embedded_mes and mes_url:
        raise click.UsageError("give either --embedded-mes or --mes-url, not both")
    if not with_worker and verify:
        click.echo("invsync: --no-worker leaves the MES without the ERP's events; --verify will show that", err=True)
    report = run_simulation(settings(ctx), seed=seed, hours=hours, start=start, plant_size=plant_size,
                            faults=faults, mes_url=mes_url, with_worker=with_worker, verify=verify,
                            drain_timeout=timeout)  # fmt: skip
    summary, sim, r = report.summary(), report.sim, report.result
    plant = f"{sim.plant.size} plant ({len(sim.plant.materials)} materials, {', '.join(sim.plant.warehouses)})"
    click.echo(f"simulated {sim.hours} h from {sim.start:%Y-%m-%d %H:%M} UTC, seed {sim.seed}, {plant}, "
               f"faults: {sim.profile.name}")  # fmt: skip
    click.echo(f"  {r.events} events: {r.erp_postings} ERP postings, {r.backflushes} MES backflushes; "
               f"{r.published} messages published in {r.seconds:.1f} s")  # fmt: skip
    faults_text = ", ".join(f"{k} {v}" for k, v in summary["faults"].items()) or "none"
    click.echo(f"  faults injected: {faults_text}")
    click.echo(f"  ground truth: {r.truth_path} (simulation_runs, injected_faults, planned_events)")
    if r.unpublished_backflushes:
        click.echo(f"invsync: the MES did not publish {len(r.unpublished_backflushes)} backflush(es); start it with "
                   "`invsync mes serve --publish`", err=True)  # fmt: skip
    failed = False
    if report.comparison is not None:
        c = report.comparison
        off_truth = c[c["fault_touched"] & ~c["matches_ground_truth"]]
        click.echo(f"verify: {len(c)} material-location-units, {int((c['difference'] != 0).sum())} differ; "
                   f"{len(report.unexpected)} without a fault differ, {len(off_truth)} faulted differ from the "
                   "ground truth")  # fmt: skip
        for title, rows in (("differ without a fault", report.unexpected), ("not as the ground truth says", off_truth)):
            if len(rows):
                click.echo(f"  {title}:\n" + rows.to_string(index=False))
        failed = bool(len(report.unexpected))
    click.echo(json.dumps(summary))
    sys.exit(1 if failed else 0)


@click.command("demo")
@click.option("--hours", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--plant-size", type=click.Choice(["small", "medium"]), default="small", show_default=True)
@click.option("--faults", default="default", show_default=True, help="default | none | a profile YAML file")
def demo(hours: int, seed: int, plant_size: str, faults: str) -> None:
    """Everything on the embedded defaults: reference MES, ERP tables, RabbitMQ, worker, sensor,
    hourly reconciliation; prints where the report is and how the findings match the injected faults.

    Starts afresh in INVSYNC_HOME (default data/runtime) and the broker namespace `demo.`."""
    import logging

    from invsync_pipeline.reference.demo import as_json_line, describe, run_demo

    logging.basicConfig(level=logging.ERROR)  # the worker's per-message logs would drown the summary
    result = run_demo(hours=hours, seed=seed, plant_size=plant_size, faults=faults,
                      log=lambda line: click.echo(f"invsync demo: {line}"))  # fmt: skip
    for line in describe(result):
        click.echo(line)
    click.echo("next: make dev, then open http://127.0.0.1:3000 (assets, checks, runs, metadata)")
    click.echo(json.dumps(as_json_line(result)))
