"""`invsync dlq`: list, show, replay and discard the messages parked in the parking queue."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import settings

if TYPE_CHECKING:
    from invsync_pipeline.messaging.dlq import Filters

F = TypeVar("F", bound=Callable[..., Any])


def _filters(tx: tuple[str, ...], reason: str | None, material: str | None, since: datetime | None,
             until: datetime | None) -> Filters:  # fmt: skip
    from invsync_pipeline.messaging.dlq import Filters

    return Filters(reason=reason, material=material, since=since, until=until, transaction_ids=tuple(tx))


def _no_filter() -> Filters:
    return _filters((), None, None, None, None)


def _filter_options(fn: F) -> F:
    for option in reversed([
        click.option("--tx", multiple=True, help="Only this transaction_id (repeatable)."),
        click.option("--reason", default=None, help="Only parked reasons containing this text."),
        click.option("--material", default=None, help="Only materials matching this glob, e.g. RAW-*."),
        click.option("--since", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), default=None,
                     help="Only events at or after this time (event timestamp)."),
        click.option("--until", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), default=None),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


def _actor(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


@click.group()
def dlq() -> None:
    """The parking queue: what failed every retry, was invalid, or expired."""


@dlq.command("list")
@_filter_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_list(ctx: click.Context, tx: tuple[str, ...], reason: str | None, material: str | None,
             since: datetime | None, until: datetime | None, as_json: bool) -> None:  # fmt: skip
    """Parked messages with their reasons (nothing is removed)."""
    from invsync_pipeline.messaging.dlq import browse

    parked = browse(settings(ctx), _filters(tx, reason, material, since, until))
    for p in parked:
        if as_json:
            click.echo(json.dumps(p.summary()))
        else:
            click.echo(f"{p.transaction_id or '?':<28} {p.material_number or '?':<14} retries={p.retries}  {p.reason}")
    if not as_json:
        click.echo(f"{len(parked)} parked message(s) match")


@dlq.command("show")
@click.argument("transaction_id")
@click.pass_context
def dlq_show(ctx: click.Context, transaction_id: str) -> None:
    """One parked message: headers and body."""
    from invsync_pipeline.messaging.amqp_headers import headers_as_json
    from invsync_pipeline.messaging.dlq import browse

    found = browse(settings(ctx), _filters((transaction_id,), None, None, None, None))
    if not found:
        raise Failure(f"{transaction_id} is not in the parking queue")
    for p in found:
        click.echo(json.dumps({**p.summary(), "headers": headers_as_json(p.headers),
                               "body": p.body.decode("utf-8", "replace")}, indent=2))  # fmt: skip


@dlq.command("replay")
@_filter_options
@click.option("--all", "everything", is_flag=True, help="Replay every parked message (no filter needed).")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--by", default=None, help="Who replays (default: the login name).")
@click.pass_context
def dlq_replay(ctx: click.Context, tx: tuple[str, ...], reason: str | None, material: str | None,
               since: datetime | None, until: datetime | None, everything: bool, dry_run: bool,
               by: str | None) -> None:  # fmt: skip
    """Send parked messages back to the queue that failed them; invalid ones are refused."""
    from invsync_pipeline.messaging.dlq import replay

    filters = _filters(tx, reason, material, since, until)
    if not everything and filters == _no_filter():
        raise click.UsageError("name what to replay (--tx, --reason, --material, --since/--until) or pass --all")
    outcome = replay(settings(ctx), filters, _actor(by), dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    for p in outcome.replayed:
        click.echo(f"{verb} {p.transaction_id} -> {p.failed_queue or 'its plant queue'}")
    for p, why in outcome.refused:
        click.echo(f"refused {p.transaction_id}: {why} (it stays parked)")
    click.echo(f"{len(outcome.replayed)} {verb}, {len(outcome.refused)} refused")
    sys.exit(1 if outcome.refused else 0)


@dlq.command("discard")
@_filter_options
@click.option("--note", required=True, help="Why: kept in the audit with the whole message.")
@click.option("--dry-run", is_flag=True)
@click.option("--by", default=None)
@click.pass_context
def dlq_discard(ctx: click.Context, tx: tuple[str, ...], reason: str | None, material: str | None,
                since: datetime | None, until: datetime | None, note: str, dry_run: bool,
                by: str | None) -> None:  # fmt: skip
    """Remove parked messages for good (the audit keeps each whole, with who and why)."""
    from invsync_pipeline.messaging.dlq import discard

    filters = _filters(tx, reason, material, since, until)
    if filters == _no_filter():
        raise click.UsageError("name what to discard (--tx, --reason, --material, --since/--until)")
    config = settings(ctx)
    try:
        gone = discard(config, filters, _actor(by), note, dry_run=dry_run)
    except ValueError as exc:  # a blank note: a usage error, as a missing one is
        raise click.UsageError(str(exc)) from None
    click.echo(f"{len(gone)} {'would be discarded' if dry_run else 'discarded'}")
