"""`invsync erp`: create the ERP tables, print its stock, and post events to it as material documents."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import INSTANT, jsonl_file, jsonl_lines, settings

if TYPE_CHECKING:
    from invsync_pipeline.sources.erp import ErpDatabase


@click.group()
def erp() -> None:
    """The ERP database: SAP-shaped tables at INVSYNC_ERP_URL (names from erp.tables in the config)."""


@contextlib.contextmanager
def _erp_database(ctx: click.Context) -> Iterator[ErpDatabase]:
    """The ERP database; one that cannot be reached or lacks its tables ends the command with exit code 1."""
    import sqlalchemy as sa

    from invsync_pipeline.sources.erp import ErpDatabase

    with ErpDatabase.from_settings(settings(ctx)) as db:
        try:
            yield db
        except sa.exc.DBAPIError as exc:
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise Failure(
                f"ERP database {db.url.render_as_string(hide_password=True)}: {reason}\n"
                "Check INVSYNC_ERP_URL (or erp.url in the config); `invsync erp init` creates the tables.",
                exit_code=1,
            ) from None


@erp.command("init")
@click.pass_context
def erp_init(ctx: click.Context) -> None:
    """Create the ERP tables if missing (reference plant and tests; a real SAP replica is read-only)."""
    with _erp_database(ctx) as db:
        db.create_schema()
    click.echo(f"ERP tables ready at {db.url.render_as_string(hide_password=True)}")


@erp.command("stock")
@click.option("--as-of", "as_of", type=INSTANT, help="RFC 3339 instant, e.g. 2026-11-24T10:00:00Z (default now).")
@click.option("--plant", help="Only this plant (the warehouse code, e.g. WH01).")
@click.pass_context
def erp_stock(ctx: click.Context, as_of: datetime | None, plant: str | None) -> None:
    """Print stock per material and location, now or as of an instant (like SAP's MB5B)."""
    with _erp_database(ctx) as db:
        frame = db.stock_as_of(as_of, plant)
    if frame.empty:
        click.echo("no stock")
        return
    click.echo(frame[["material", "location", "unit", "quantity"]].to_string(index=False))


@erp.command("post")
@jsonl_file
@click.pass_context
def erp_post(ctx: click.Context, file: IO[bytes]) -> None:
    """Post a JSON Lines file of contract events as material documents; bad lines are reported."""
    from invsync_pipeline.contract import ContractViolation, try_parse_event
    from invsync_pipeline.sources.erp import ErpPostingError

    posted = duplicates = bad = 0
    with _erp_database(ctx) as db:
        for lineno, line in jsonl_lines(file):
            result = try_parse_event(line)
            if isinstance(result, ContractViolation):
                bad += 1
                click.echo(f"line {lineno}: {result}")
                continue
            try:
                document = db.post(result)
            except ErpPostingError as exc:
                bad += 1  # this line only: the others are still posted
                click.echo(f"line {lineno}: {exc}")
                continue
            if document.created:
                posted += 1
            else:
                duplicates += 1
    click.echo(f"{posted} posted, {duplicates} already posted, {bad} refused")
    sys.exit(1 if bad else 0)
