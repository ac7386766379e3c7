"""`invsync topology`: declare, export and delete the RabbitMQ exchanges, queues and bindings."""

from __future__ import annotations

import click

from invsync_pipeline.cli.options import settings


@click.group()
def topology() -> None:
    """RabbitMQ exchanges, queues and bindings."""


@topology.command("apply")
@click.pass_context
def topology_apply(ctx: click.Context) -> None:
    """Declare the topology on the broker (safe to run again)."""
    from invsync_pipeline.messaging.topology import apply_topology

    topo = apply_topology(settings(ctx))
    click.echo(f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, {len(topo.bindings)} bindings")


@topology.command("export")
@click.pass_context
def topology_export(ctx: click.Context) -> None:
    """Print the topology as a RabbitMQ definitions JSON (rabbitmqctl import_definitions)."""
    from invsync_pipeline.messaging.topology import export_json

    click.echo(export_json(settings(ctx)))


@topology.command("delete")
@click.option("--yes", is_flag=True, help="Really delete (messages in the queues are lost).")
@click.pass_context
def topology_delete(ctx: click.Context, yes: bool) -> None:
    """Delete every queue and exchange of the topology."""
    from invsync_pipeline.messaging.topology import delete_topology

    if not yes:
        raise click.UsageError("this deletes queues with their messages; pass --yes to go ahead")
    topo = delete_topology(settings(ctx))
    click.echo(f"deleted {len(topo.queues)} queues and {len(topo.exchanges)} exchanges")
