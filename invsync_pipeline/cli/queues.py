"""`invsync queues` and `invsync alerts`: what the queues hold and what is wrong, and the alerts raised."""

from __future__ import annotations

import click

from invsync_pipeline.cli.options import settings


@click.command("queues")
@click.option("--record/--no-record", default=False, help="Also keep the sample and raise alerts, as the sensor does.")
@click.pass_context
def queues(ctx: click.Context, record: bool) -> None:
    """What every queue of the topology holds (ready, unacked, in its dead-letter path, total),
    and what is wrong with them; "-" is a count the source cannot see."""
    from invsync_pipeline.ops.queue_health import check_queues, evaluate, sample

    config = settings(ctx)
    if record:
        samples, findings, raised = check_queues(config)
    else:
        samples = sample(config)
        findings, raised = evaluate(config, samples), []
    flags = {s.queue: "(not declared)" for s in samples if s.source == "missing"}
    flags.update({f.queue: "STRANDED" for f in findings if f.rule == "stranded"})

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    click.echo(f"{'queue':<40} {'role':<8} {'ready':>8} {'unacked':>8} {'dead-letter':>11} {'total':>8} "
               f"{'consumers':>9}  stranded")  # fmt: skip
    for s in samples:
        line = (f"{s.queue:<40} {s.role:<8} {s.ready:>8} {count(s.unacked):>8} {count(s.dead_letter):>11} "
                f"{count(s.total):>8} {s.consumers:>9}  {flags.get(s.queue, '')}")  # fmt: skip
        click.echo(line.rstrip())
    click.echo(f"counts from: {', '.join(sorted({s.source for s in samples if s.source != 'missing'})) or '-'}")
    for f in findings:
        click.echo(f"{f.severity.upper()} {f.rule}: {f.message}")
    if raised:
        click.echo(f"{len(raised)} new alert(s) raised")


@click.command("alerts")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def alerts_list(ctx: click.Context, limit: int) -> None:
    """The latest alerts and whether the webhook got them."""
    from invsync_pipeline.ops.alerts import alerts

    for a in alerts(settings(ctx))[-limit:]:
        click.echo(f"{a['created_at'][:19]}  {a['severity']:<8} {a['kind']:<20} {a['subject']}  [{a['delivery']}]")
