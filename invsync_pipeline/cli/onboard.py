"""`invsync onboard`: load a plant's material master and opening balances into the MES at a cut-off."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from invsync_pipeline.cli.options import INSTANT, erp_resource, mes_resource


@click.command("onboard")
@click.option(
    "--at",
    "cutoff",
    required=True,
    type=INSTANT,
    help="The cut-off, a whole hour (RFC 3339, e.g. 2026-12-01T06:00:00Z): the first reconciled hour.",
)
@click.option("--from-erp", is_flag=True, help="The opening balances are the ERP's stock as of the cut-off.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The opening balances from a CSV: material_number, material_type, unit, location, quantity.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be loaded; write nothing.")
@click.option("--overwrite", is_flag=True, help="Also set keys the MES already holds with another balance.")
@click.pass_context
def onboard_plant(ctx: click.Context, cutoff: datetime, from_erp: bool, csv_path: str | None, dry_run: bool,
                  overwrite: bool) -> None:  # fmt: skip
    """Load a plant's material master and opening balances into the MES at a cut-off (idempotent)."""
    from pathlib import Path

    from invsync_pipeline.onboarding import onboard

    mes = mes_resource(ctx).open("live")
    erp = erp_resource(ctx).open() if from_erp else None
    try:
        result = onboard(mes, cutoff, erp=erp, csv_path=Path(csv_path) if csv_path else None, dry_run=dry_run,
                         overwrite=overwrite)  # fmt: skip
    finally:
        mes.close()
        if erp is not None:
            erp.dispose()
    for (material, location, unit), held, wanted in result.disagreements[:20]:
        click.echo(f"the MES already holds {held} {unit} of {material} at {location}; the opening balance is "
                   f"{wanted} (left as it is; --overwrite sets it)", err=True)  # fmt: skip
    if not dry_run:
        click.echo(f"next: set reconciliation.first_hour: \"{cutoff:%Y-%m-%d-%H:00}\" in the config, so the first "
                   "reconciled hour starts at the cut-off", err=True)  # fmt: skip
    click.echo(json.dumps(result.as_dict()))
    sys.exit(1 if result.load is not None and result.load.failed else 0)
