"""`invsync cutover`: the cutover from the old batch sync, one command per step (docs/cutover.md)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import INSTANT, erp_resource, mes_resource, settings
from invsync_pipeline.settings import MATERIAL_TYPES

if TYPE_CHECKING:
    from invsync_pipeline.cutover.readiness import Readiness
    from invsync_pipeline.settings import Settings


def _systems(ctx: click.Context) -> dict[str, Any]:
    """The ERP and MES resources as the cutover's steps take them (``erp=``, ``mes=``)."""
    return {"erp": erp_resource(ctx), "mes": mes_resource(ctx)}


def _readiness(config: Settings) -> tuple[Readiness | None, str | None]:
    """The go-live gate from the warehouse (read-only), or None with why it cannot be read."""
    import duckdb

    from invsync_pipeline.cutover.readiness import readiness
    from invsync_pipeline.warehouse import open_warehouse

    if not config.warehouse_path.exists():
        return None, f"no warehouse at {config.warehouse_path}: materialize cutover_comparison first"
    try:
        with open_warehouse(config.warehouse_path, read_only=True) as conn:
            return readiness(conn, config), None
    except duckdb.CatalogException:
        return None, "the warehouse has no cutover tables yet: materialize cutover_comparison first"
    except duckdb.IOException as exc:
        return None, f"the warehouse is being written by a run ({exc}); try again when it finished"


@click.group()
def cutover() -> None:
    """Shadow mode beside the old batch sync, the go-live gate, go-live and rollback."""


@cutover.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """The mode in force, a switch under way, the workers, the switch log and the gate."""
    from invsync_pipeline.cutover.scope import scope_label, scope_on
    from invsync_pipeline.cutover.state import CutoverState

    config = settings(ctx)
    with CutoverState(config) as state:
        mode = state.current()
        workers = state.workers()
        history = state.history()
    today = datetime.now(UTC).date()
    click.echo(f"event-driven path: {mode.mode}  (scope today: {scope_label(scope_on(config, today))})")
    if mode.switching:
        s = mode.switching
        click.echo(f"switch {s.seq} under way since {s.requested_at:%Y-%m-%d %H:%M:%S}Z: {s.from_mode} -> {s.to_mode}")
    click.echo(f"sync workers seen in the last 10 s: {len(workers)}")
    for worker_id, _host, _pid, paused_for in workers:
        click.echo(f"  {worker_id} {f'paused for switch {paused_for}' if paused_for else 'working'}")
    for s in history[-10:]:
        when = f"{s.completed_at:%Y-%m-%d %H:%M:%S}Z" if s.completed_at else "-"
        click.echo(f"  #{s.seq} {s.status:9} {s.from_mode} -> {s.to_mode} at {when} by {s.requested_by}"
                   f"{' keys copied: ' + str(s.seeded_keys) if s.seeded_keys is not None else ''}"
                   f"{' (' + s.note + ')' if s.note else ''}")  # fmt: skip
    result, why = _readiness(config)
    click.echo(f"go-live gate: {result.summary() if result else why}")


@cutover.command("go-live")
@click.option("--force", is_flag=True, help="Switch even though the go-live gate does not pass.")
@click.option("--note", default=None, help="Why, for the switch log.")
@click.option("--pause-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the sync workers to pause.")  # fmt: skip
@click.pass_context
def go_live(ctx: click.Context, force: bool, note: str | None, pause_timeout: float) -> None:
    """Switch the event-driven path from the shadow MES to the live one (the batch sync stops for its scope)."""
    result, why = _readiness(settings(ctx))
    if not force and (result is None or not result.passed):
        raise Failure(f"not going live: {result.summary() if result else why}. Pass --force to switch anyway.",
                      exit_code=1)  # fmt: skip
    _switch(ctx, "live", note or ("forced past the gate" if force and not (result and result.passed) else None),
            pause_timeout)  # fmt: skip


@cutover.command("rollback")
@click.option("--note", default=None, help="Why, for the switch log.")
@click.option("--pause-timeout", type=float, default=60.0, show_default=True)
@click.pass_context
def rollback(ctx: click.Context, note: str | None, pause_timeout: float) -> None:
    """Back to the batch sync: the event-driven path returns to the shadow MES, the batch sync runs at once."""
    _switch(ctx, "shadow", note, pause_timeout)


def _switch(ctx: click.Context, to_mode: str, note: str | None, pause_timeout: float) -> None:
    from invsync_pipeline.cutover.switch import switch_to

    result = switch_to(settings(ctx), to_mode, note=note, pause_timeout=pause_timeout, **_systems(ctx))
    click.echo(json.dumps({"switch": result.switch.seq, "mode": to_mode, "workers_paused": result.workers_paused,
                           "copied": result.seeded, "batch_sync": result.batch_sync}, default=str))  # fmt: skip


@cutover.command("abort")
@click.argument("seq", type=int)
@click.option("--note", required=True, help="Why: the switch's command died, for example.")
@click.pass_context
def abort(ctx: click.Context, seq: int, note: str) -> None:
    """Abort a switch whose command died; workers resume in the mode they had."""
    from invsync_pipeline.cutover.state import CutoverState

    with CutoverState(settings(ctx)) as state:
        state.abort(seq, note)
    click.echo(f"switch {seq} aborted (if it was under way)")


@cutover.command("batch-sync")
@click.option("--at", type=INSTANT, help="Copy the ERP stock as of this instant (default now).")
@click.pass_context
def batch_sync(ctx: click.Context, at: datetime | None) -> None:
    """Run the old batch sync once: ERP stock -> the live MES."""
    from invsync_pipeline.cutover.batch_sync import run_batch_sync

    live, books = mes_resource(ctx).open("live"), erp_resource(ctx).open()
    try:
        summary = run_batch_sync(settings(ctx), live, books, at)
    finally:
        live.close()
        books.dispose()
    click.echo(json.dumps(summary, default=str))
    sys.exit(1 if summary.get("failed") else 0)


@cutover.command("seed")
@click.option("--to", "mode", type=click.Choice(["shadow", "live"]), default="shadow", show_default=True)
@click.option("--type", "types", multiple=True, type=click.Choice(MATERIAL_TYPES),
              help="Material types to seed (default: every type).")  # fmt: skip
@click.option("--at", type=INSTANT, help="As of this instant (default now).")
@click.pass_context
def seed(ctx: click.Context, mode: str, types: tuple[str, ...], at: datetime | None) -> None:
    """Set an MES's stock to the ERP's: after fixing a problem found in shadow mode, or widening the scope."""
    from invsync_pipeline.cutover.switch import seed_from_erp

    summary = seed_from_erp(settings(ctx), mode, types or MATERIAL_TYPES, at, **_systems(ctx))
    click.echo(json.dumps(summary, default=str))
    sys.exit(1 if summary.get("failed") else 0)


@cutover.command("demo")
@click.option("--days", type=click.IntRange(3, 62), default=21, show_default=True)
def demo(days: int) -> None:
    """A compressed shadow period beside the batch sync, compared day by day and gated (about a minute).

    Runs in <INVSYNC_HOME>/cutover with its own config, in the broker namespace `demo.`."""
    import logging

    from invsync_pipeline.reference.cutover_demo import run_cutover_demo

    logging.basicConfig(level=logging.ERROR)
    result = run_cutover_demo(days=days, log=lambda line: click.echo(f"invsync cutover demo: {line}"))
    click.echo("day         event-driven  batch sync")
    for day, accuracy, batch in result.trend:
        click.echo(f"{day}  {100 * (accuracy or 0):10.2f}%  {100 * (batch or 0):9.2f}%")
    click.echo(f"go-live gate: {result.gate}")
    click.echo(f"chart: {result.chart}")
    click.echo(f"next: INVSYNC_HOME={result.home} INVSYNC_CONFIG={result.config} make dev, then Assets > "
               "cutover_comparison (Checks: go_live_readiness)")  # fmt: skip
    click.echo(json.dumps({"days": len(result.days), "passed": result.passed,
                           "last_accuracy": result.trend[-1][1] if result.trend else None}))  # fmt: skip
