"""`invsync sync-worker`: the real-time worker that applies the plant queues to the MES, in the foreground."""

from __future__ import annotations

import json

import click

from invsync_pipeline.cli.options import mes_resource, settings


@click.command("sync-worker")
@click.option("--queue", "queues", multiple=True, help="Only these work queues (default: all plants).")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until SIGTERM).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def sync_worker(ctx: click.Context, queues: tuple[str, ...], seconds: float | None, log_level: str) -> None:
    """Apply the plant queues to the MES in real time (SIGTERM finishes in-flight work, acks, exits)."""
    import logging

    from invsync_pipeline.sync.worker import SyncWorker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = settings(ctx)
    mes = mes_resource(ctx)
    worker = SyncWorker(config, mes.open("live"), shadow=mes.open("shadow"), queues=list(queues) or None)
    worker.install_signal_handlers()
    stats = worker.run(max_seconds=seconds)
    click.echo(json.dumps(stats.__dict__))
