"""The `invsync` command: everything an operator runs by hand, one module per command group."""

from __future__ import annotations

import click

from invsync_pipeline.cli import (
    contract,
    cutover,
    dlq,
    erp,
    mes,
    onboard,
    publish,
    queues,
    review,
    simulate,
    staged,
    sync_worker,
    topology,
)
from invsync_pipeline.cli.errors import TranslatingGroup

__all__ = ["main"]


@click.group(cls=TranslatingGroup)
@click.option("--config", "config_path", envvar="INVSYNC_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default data/invsync.yaml).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """invsync: real-time ERP/MES inventory sync and hourly reconciliation."""
    ctx.obj = {"config_path": config_path}


for _command in (
    contract.contract,
    topology.topology,
    publish.publish,
    publish.outbox,
    staged.staged,
    mes.mes,
    erp.erp,
    queues.queues,
    queues.alerts_list,
    dlq.dlq,
    review.rules,
    review.review,
    onboard.onboard_plant,
    simulate.simulate,
    simulate.demo,
    sync_worker.sync_worker,
    cutover.cutover,
):
    main.add_command(_command)
