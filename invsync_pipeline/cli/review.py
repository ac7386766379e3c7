"""`invsync rules` and `invsync review`: check the rules file, and decide the corrections held for review."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from invsync_pipeline.cli.errors import Failure
from invsync_pipeline.cli.options import erp_resource, mes_resource, settings

if TYPE_CHECKING:
    import duckdb


@click.group()
def rules() -> None:
    """The source-of-truth rules file (data/rules.yaml)."""


@rules.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def rules_check(ctx: click.Context, path: str | None) -> None:
    """Validate a rules file (default: the one in use); exit 2 with the field and value when it is wrong."""
    from invsync_pipeline.recon.rules import load_rules

    loaded = load_rules(path or settings(ctx).reconciliation.rules_path)
    click.echo(f"ok: {len(loaded.source_of_truth)} source-of-truth rules; always review: "
               f"{', '.join(loaded.always_review)}")  # fmt: skip


@contextlib.contextmanager
def _warehouse(ctx: click.Context, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB warehouse, or a clear message when a pipeline run holds the write lock."""
    import duckdb

    from invsync_pipeline.warehouse import open_warehouse

    path = settings(ctx).warehouse_path
    if not path.exists():
        raise Failure(f"no warehouse at {path} yet; run the pipeline first (make demo)")
    try:
        with open_warehouse(path, read_only=read_only) as conn:
            yield conn
    except duckdb.IOException as exc:
        raise Failure(f"the warehouse is busy ({exc}); a pipeline run is writing, try again shortly") from None


@click.group()
def review() -> None:
    """Critical corrections waiting for a supervisor."""


@review.command("list")
@click.pass_context
def review_list(ctx: click.Context) -> None:
    """Corrections waiting for review, oldest first."""
    from invsync_pipeline.recon.review import held

    with _warehouse(ctx, read_only=True) as conn:
        frame = held(conn)
    if frame.empty:
        click.echo("nothing waits for review")
        return
    click.echo(frame.to_string(index=False))


@review.command("show")
@click.argument("correction_id")
@click.pass_context
def review_show(ctx: click.Context, correction_id: str) -> None:
    """One correction with its audit trail."""
    from invsync_pipeline.recon.review import show

    with _warehouse(ctx, read_only=True) as conn:
        row = show(conn, correction_id)
    for key, value in row.items():
        click.echo(f"{key:>16}: {value}")


@review.command("approve")
@click.argument("correction_id")
@click.option("--by", required=True, help="The supervisor who decides.")
@click.option("--note", default=None)
@click.option("--effective-at", type=click.Choice(["now", "next-hour"]), default="now", show_default=True,
              help="next-hour: at the start of the hour after the reconciled one (replaying past hours).")  # fmt: skip
@click.pass_context
def review_approve(ctx: click.Context, correction_id: str, by: str, note: str | None, effective_at: str) -> None:
    """Apply a held correction and record the approval."""
    from datetime import UTC, datetime, timedelta

    from invsync_pipeline.recon.review import approve, show
    from invsync_pipeline.resources import open_systems

    config = settings(ctx)
    with _warehouse(ctx) as conn, open_systems(erp_resource(ctx), mes_resource(ctx)) as systems:
        when = datetime.now(UTC)
        if effective_at == "next-hour":
            when = show(conn, correction_id)["partition_hour"] + timedelta(hours=1)
        row = approve(config, conn, systems, correction_id, by, note, when)
    click.echo(f"approved {correction_id}: {row['target_system']} {row['quantity']:+} {row['unit']} "
               f"at {row['location']} ({row['material_number']}), effective {when:%Y-%m-%d %H:%M} UTC")  # fmt: skip


@review.command("reject")
@click.argument("correction_id")
@click.option("--by", required=True, help="The supervisor who decides.")
@click.option("--note", required=True, help="Why: it goes into the audit log.")
@click.pass_context
def review_reject(ctx: click.Context, correction_id: str, by: str, note: str) -> None:
    """Close a held correction without changing either system."""
    from invsync_pipeline.recon.review import reject

    with _warehouse(ctx) as conn:
        reject(conn, correction_id, by, note)
    click.echo(f"rejected {correction_id}")
