"""`invsync staged`: drain the ledger tap into the staged event log, and look at that log."""

from __future__ import annotations

import json

import click

from invsync_pipeline.cli.options import settings


@click.group()
def staged() -> None:
    """The staged event log the ledger tap is drained into."""


@staged.command("drain")
@click.option("--seconds", type=float, default=None, help="Time budget (default staging.tick_max_seconds).")
@click.pass_context
def staged_drain(ctx: click.Context, seconds: float | None) -> None:
    """Drain the ledger tap once, as a sensor tick does (durable before ack)."""
    from invsync_pipeline.messaging.drain import drain_ledger_tap

    click.echo(drain_ledger_tap(settings(ctx), max_seconds=seconds).summary())


@staged.command("status")
@click.pass_context
def staged_status(ctx: click.Context) -> None:
    """Segments and events per hour, and the size of the quarantine."""
    from invsync_pipeline.messaging.staged_log import StagedEventLog, partition_key_of_dir

    staged_log = StagedEventLog(settings(ctx).staged_dir)
    hours = sorted(p.name for p in staged_log.events_dir.iterdir()) if staged_log.events_dir.is_dir() else []
    click.echo(f"{'hour (UTC)':<18} {'segments':>8} {'lines':>10}")
    for name in hours:
        key = partition_key_of_dir(name)
        segments = staged_log.segments(key)
        lines = sum(p.read_bytes().count(b"\n") for p in segments)
        click.echo(f"{key:<18} {len(segments):>8} {lines:>10}")
    click.echo(f"quarantined messages: {len(staged_log.quarantined())} (invsync staged quarantine to list)")


@staged.command("columnar")
@click.pass_context
def staged_columnar(ctx: click.Context) -> None:
    """Write the Parquet twin of every event segment that lacks one (segments staged before the
    drain wrote twins, or whose twin a crash left unwritten). Staging reads a twin instead of its
    segment: the same rows, several times fewer bytes. Safe to run while the drain runs."""
    from invsync_pipeline.messaging.staged_log import StagedEventLog, columnar_twins, partition_key_of_dir

    staged_log = StagedEventLog(settings(ctx).staged_dir)
    hours = (
        sorted(p.name for p in staged_log.events_dir.iterdir() if p.is_dir()) if staged_log.events_dir.is_dir() else []
    )
    written = 0
    for name in hours:
        written += len(columnar_twins(staged_log.segments(partition_key_of_dir(name))))
    click.echo(f"wrote {written} Parquet twins in {len(hours)} hours")


@staged.command("quarantine")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, body included.")
@click.pass_context
def staged_quarantine(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List quarantined messages with their reasons, newest last."""
    from invsync_pipeline.messaging.staged_log import StagedEventLog

    rows = StagedEventLog(settings(ctx).staged_dir).quarantined()[-limit:]
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{row['received_at']}  {row['routing_key']}  {row['body_bytes']} bytes  {row['reason']}")
