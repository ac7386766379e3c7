"""`invsync publish` and `invsync outbox`: events into the local outbox, and from there to the broker."""

from __future__ import annotations

import json
import sys
from typing import IO

import click

from invsync_pipeline.cli.options import jsonl_file, jsonl_lines, settings


@click.command("publish")
@jsonl_file
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid lines even if some lines are invalid.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to spend publishing; what is left stays buffered for `invsync outbox flush`.")  # fmt: skip
@click.pass_context
def publish(ctx: click.Context, file: IO[bytes], skip_invalid: bool, timeout: float) -> None:
    """Validate a JSON Lines file of events, buffer them in the outbox and publish them."""
    from invsync_pipeline.contract import ContractLimits, try_parse_event
    from invsync_pipeline.messaging.outbox import Outbox

    limits = ContractLimits.from_settings(settings(ctx))
    events, bad = [], 0
    for lineno, line in jsonl_lines(file):
        result = try_parse_event(line, limits=limits)
        if hasattr(result, "transaction_id"):
            events.append(result)
        else:
            bad += 1
            click.echo(f"line {lineno}: {result}", err=True)
    if bad and not skip_invalid:
        click.echo(f"{bad} invalid line(s); nothing of {file.name} was enqueued. Fix them, or pass "
                   "--skip-invalid to publish the valid lines only.", err=True)  # fmt: skip
        sys.exit(1)
    with Outbox(settings(ctx)) as box:
        result = box.publish(events, max_seconds=timeout)
    dup = f", {len(result.duplicates)} already buffered (ignored)" if result.duplicates else ""
    skipped = f", {bad} invalid skipped" if bad else ""
    click.echo(f"{result.enqueued.accepted} enqueued{dup}{skipped}; {result.published} published, "
               f"{result.pending} buffered in the outbox")  # fmt: skip
    if result.broker_error:
        click.echo(f"invsync: not published yet: {result.broker_error}", err=True)


@click.group()
def outbox() -> None:
    """The local buffer of events waiting for the broker's confirm."""


@outbox.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def outbox_status(ctx: click.Context, as_json: bool) -> None:
    """How many events wait in the outbox, since when, and for which routing keys."""
    from invsync_pipeline.messaging.outbox import Outbox

    with Outbox(settings(ctx)) as box:
        status = box.status()
    oldest = status.oldest_enqueued_at.isoformat() if status.oldest_enqueued_at else None
    if as_json:
        click.echo(json.dumps({"path": status.path, "pending": status.pending, "capacity": status.capacity,
                               "oldest_enqueued_at": oldest, "by_routing_key": status.by_routing_key}))  # fmt: skip
        return
    click.echo(f"{status.path}: {status.pending} of {status.capacity} events buffered"
               + (f", oldest enqueued {oldest}" if oldest else ""))  # fmt: skip
    for key, count in list(status.by_routing_key.items())[:20]:
        click.echo(f"  {count:>9}  {key}")


@outbox.command("flush")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Give up after this many seconds (reconnecting with backoff); 0 = until empty.")  # fmt: skip
@click.pass_context
def outbox_flush(ctx: click.Context, timeout: float) -> None:
    """Publish everything in the outbox, retrying while the broker is away; exit 1 if some is left."""
    from invsync_pipeline.messaging.outbox import Outbox

    def on_retry(exc: Exception, wait: float) -> None:
        click.echo(f"invsync: {exc} (retrying in {wait:.1f} s)", err=True)

    with Outbox(settings(ctx)) as box:
        result = box.flush_until_empty(timeout or None, on_retry=on_retry)
    click.echo(result.summary())
    sys.exit(1 if result.pending else 0)


@outbox.command("relay")
@click.pass_context
def outbox_relay(ctx: click.Context) -> None:
    """Publish continuously beside a live ERP: new events go out within ~20 ms (SIGTERM stops)."""
    import signal
    import threading

    from invsync_pipeline.messaging.outbox import Outbox

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Outbox(settings(ctx)) as box:
        result = box.relay(stop)
    click.echo(result.summary())
