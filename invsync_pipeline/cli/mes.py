"""`invsync mes`: run the reference MES, and look up stock and faults in an MES."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import settings

if TYPE_CHECKING:
    from invsync_pipeline.reference.mes_client import ReferenceMesClient


@click.group()
def mes() -> None:
    """The reference MES service and look-ups against any MES (INVSYNC_MES_URL, INVSYNC_MES_TOKEN)."""


@contextlib.contextmanager
def _mes_client(ctx: click.Context) -> Iterator[ReferenceMesClient]:
    """A client of the MES; an MES that is away or refuses ends the look-up with exit code 1."""
    from invsync_pipeline.reference.mes_client import ReferenceMesClient
    from invsync_pipeline.sources.mes import MesError

    # The reference client: `mes faults` needs its admin API; `mes stock` is the same for any MES.
    try:
        with ReferenceMesClient.from_settings(settings(ctx)) as client:
            yield client
    except MesError as exc:
        raise Failure(str(exc), exit_code=1) from None


@mes.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite file (default <home>/mes.sqlite).")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="Publish backflushes to the exchange through <home>/mes-outbox.sqlite.")  # fmt: skip
@click.pass_context
def mes_serve(ctx: click.Context, host: str, port: int, db_path: str | None, publish: bool) -> None:
    """Run the reference MES (a Smart Factory stand-in) in the foreground."""
    from invsync_pipeline.reference.mes_publisher import MesPublisher
    from invsync_pipeline.reference.mes_service import serve

    config = settings(ctx)
    if not config.mes_token:
        raise Failure(
            "INVSYNC_MES_TOKEN is not set; the MES refuses to run without a bearer token. Set one, e.g. "
            "export INVSYNC_MES_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            exit_code=1,
        )
    path = db_path or str(config.home / "mes.sqlite")
    publisher = MesPublisher(config) if publish else None
    where = f"; backflushes published through {publisher.path}" if publisher else "; backflushes not published"
    click.echo(f"reference MES on http://{host}:{port} (data {path}){where}; OpenAPI at /openapi.json", err=True)
    serve(host, port, path, config.mes_token, publish=publisher)


@mes.command("stock")
@click.option("--location", help="Only this location, e.g. WH01/RM01.")
@click.option("--material", "material_number", help="Only this material number.")
@click.option("--as-of", "as_of", help="Stock as of this RFC 3339 instant, e.g. 2026-11-24T11:00:00Z.")
@click.pass_context
def mes_stock(ctx: click.Context, location: str | None, material_number: str | None, as_of: str | None) -> None:
    """Print the MES's stock as a table."""
    header = ("LOCATION", "MATERIAL", "UNIT", "QUANTITY")
    with _mes_client(ctx) as client:
        rows = [(r.location, r.material_number, r.unit, format(r.quantity, "f"))
                for r in client.stock(location=location, material_number=material_number, as_of=as_of)]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=False)),
                              row[3].rjust(widths[3])]))  # fmt: skip
    click.echo(f"{len(rows)} rows", err=True)


@mes.command("faults")
@click.option("--error-rate", type=click.FloatRange(0, 1), help="Share of inventory requests answered 500.")
@click.option("--latency-ms", type=click.IntRange(0), help="Latency added to every inventory request.")
@click.option("--outage/--no-outage", default=None, help="Answer 503 to inventory requests.")
@click.pass_context
def mes_faults(ctx: click.Context, error_rate: float | None, latency_ms: int | None, outage: bool | None) -> None:
    """Show the reference MES's injected faults, or change them with the options."""
    with _mes_client(ctx) as client:
        if error_rate is None and latency_ms is None and outage is None:
            faults = client.get_faults()
        else:
            faults = client.set_faults(error_rate=error_rate, latency_ms=latency_ms, outage=outage)
    click.echo(json.dumps(faults, indent=2))
