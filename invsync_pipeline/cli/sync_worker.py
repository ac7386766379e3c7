"""`invsync sync-worker`: the real-time worker that applies the plant queues to the MES, in the foreground."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import config_path, mes_resource, settings


@click.command("sync-worker")
@click.option("--queue", "queues", multiple=True, help="Only these work queues (default: all plants).")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until SIGTERM).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Run this many worker processes on the same queues; one that dies is restarted.")  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--supervisor-pid", type=int, default=None, hidden=True,
              help="Set by --processes: stop when this parent process is gone.")  # fmt: skip
@click.pass_context
def sync_worker(
    ctx: click.Context,
    queues: tuple[str, ...],
    seconds: float | None,
    processes: int,
    log_level: str,
    supervisor_pid: int | None,
) -> None:
    """Apply the plant queues to the MES in real time (SIGTERM finishes in-flight work, acks, exits).
    Prints the figures (applied, duplicates, retried, parked, ...) as one JSON line at the end."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if processes > 1:
        _supervise(ctx, queues, seconds, processes, log_level)
        return
    from invsync_pipeline.sync.worker import SyncWorker

    config = settings(ctx)
    mes = mes_resource(ctx)
    worker = SyncWorker(config, mes.open("live"), shadow=mes.open("shadow"), queues=list(queues) or None)
    worker.install_signal_handlers()
    if supervisor_pid is not None:
        _stop_when_orphaned(worker, supervisor_pid)
    stats = worker.run(max_seconds=seconds)
    click.echo(json.dumps(stats.__dict__))


def _supervise(ctx: click.Context, queues: tuple[str, ...], seconds: float | None, processes: int,
               log_level: str) -> None:  # fmt: skip
    from invsync_pipeline.sync.supervisor import Supervisor, WorkersFailed

    settings(ctx)  # a config error is reported once, here, not by each worker
    command = [sys.executable, "-m", "invsync_pipeline.cli"]
    if (path := config_path(ctx)) is not None:
        command += ["--config", path]
    command += ["sync-worker", "--log-level", log_level, f"--supervisor-pid={os.getpid()}"]
    command += [f"--queue={q}" for q in queues]
    if seconds is not None:
        command += ["--seconds", str(seconds)]
    supervisor = Supervisor(command, processes)
    supervisor.install_signal_handlers()
    try:
        totals = supervisor.run()
    except WorkersFailed as exc:
        raise Failure(str(exc)) from None
    click.echo(json.dumps(totals))


def _stop_when_orphaned(worker: Any, supervisor_pid: int) -> None:
    """A supervisor killed outright (kill -9) cannot stop its workers: each stops itself, finishing
    its in-flight work, once its parent is no longer the supervisor."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(1.0)
        worker.stop()

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
