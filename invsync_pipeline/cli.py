"""The `invsync` command: everything an operator runs by hand."""

from __future__ import annotations

import json
import sys

import click

from invsync_pipeline.settings import ConfigError, load_settings


class _Errors(click.Group):
    """Turn the project's own errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):
        from invsync_pipeline.contract import ContractViolation
        from invsync_pipeline.messaging.connection import BrokerUnavailable

        try:
            return super().invoke(ctx)
        except (ConfigError, BrokerUnavailable, ContractViolation) as exc:
            click.echo(f"invsync: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Errors)
@click.option("--config", "config_path", envvar="INVSYNC_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default data/invsync.yaml).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """invsync: real-time ERP/MES inventory sync and hourly reconciliation."""
    ctx.obj = {"config_path": config_path}


def _settings(ctx: click.Context):
    return load_settings(ctx.obj.get("config_path"))


# --- contract ---------------------------------------------------------------------------------
@main.group()
def contract() -> None:
    """The v1 message contract."""


@contract.command("schema")
def contract_schema() -> None:
    """Print the JSON Schema of contract v1 for other teams."""
    from invsync_pipeline.contract import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@contract.command("validate")
@click.argument("file", type=click.File("rb"))
def contract_validate(file) -> None:
    """Check a JSON Lines file of events; print each bad line with its reason."""
    from invsync_pipeline.contract import try_parse_event

    bad = 0
    total = 0
    for lineno, line in enumerate(file, start=1):
        if not line.strip():
            continue
        total += 1
        result = try_parse_event(line.rstrip(b"\r\n"))
        if not hasattr(result, "transaction_id"):
            bad += 1
            click.echo(f"line {lineno}: {result}")
    click.echo(f"{total - bad} valid, {bad} invalid")
    sys.exit(1 if bad else 0)


# --- topology ---------------------------------------------------------------------------------
@main.group()
def topology() -> None:
    """RabbitMQ exchanges, queues and bindings."""


@topology.command("apply")
@click.pass_context
def topology_apply(ctx: click.Context) -> None:
    """Declare the topology on the broker (safe to run again)."""
    from invsync_pipeline.messaging.topology import apply_topology

    topo = apply_topology(_settings(ctx))
    click.echo(f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, "
               f"{len(topo.bindings)} bindings")  # fmt: skip


@topology.command("export")
@click.pass_context
def topology_export(ctx: click.Context) -> None:
    """Print the topology as a RabbitMQ definitions JSON (rabbitmqctl import_definitions)."""
    from invsync_pipeline.messaging.topology import export_json

    click.echo(export_json(_settings(ctx)))


@topology.command("delete")
@click.option("--yes", is_flag=True, help="Really delete (messages in the queues are lost).")
@click.pass_context
def topology_delete(ctx: click.Context, yes: bool) -> None:
    """Delete every queue and exchange of the topology."""
    from invsync_pipeline.messaging.topology import delete_topology

    if not yes:
        raise click.UsageError("this deletes queues with their messages; pass --yes to go ahead")
    topo = delete_topology(_settings(ctx))
    click.echo(f"deleted {len(topo.queues)} queues and {len(topo.exchanges)} exchanges")


# --- publish (outbox) ---------------------------------------------------------------------------
# PUBLISH-COMMANDS


# --- staging ----------------------------------------------------------------------------------
# STAGING-COMMANDS


if __name__ == "__main__":
    main()
