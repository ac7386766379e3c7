"""`invsync rules` and `invsync review`: check the rules file, and decide the corrections held for review."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from invsync_pipeline.cli.options import erp_resource, mes_resource, settings

if TYPE_CHECKING:
    from invsync_pipeline.recon.review_store import ReviewStore


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
def _store(ctx: click.Context) -> Iterator[ReviewStore]:
    """The review store: never DuckDB, so a supervisor decides while a pipeline run writes."""
    from invsync_pipeline.recon.review_store import review_store

    with review_store(settings(ctx)) as store:
        yield store


@click.group()
def review() -> None:
    """Critical corrections waiting for a supervisor (the review store; works while runs write)."""


@review.command("list")
@click.option("--plant", default=None, help="Only this warehouse (the part of the location before '/').")
@click.option("--material-type", default=None)
@click.option("--cause", default=None)
@click.option("--older-than-hours", type=float, default=None, help="Only items held at least this long.")
@click.pass_context
def review_list(
    ctx: click.Context, plant: str | None, material_type: str | None, cause: str | None, older_than_hours: float | None
) -> None:
    """Corrections waiting for review, oldest first."""
    from invsync_pipeline.recon.review import held

    with _store(ctx) as store:
        frame = held(store, plant=plant, material_type=material_type, cause=cause, min_age_hours=older_than_hours)
    if frame.empty:
        click.echo("nothing waits for review")
        return
    click.echo(frame.to_string(index=False))


@review.command("show")
@click.argument("correction_id")
@click.pass_context
def review_show(ctx: click.Context, correction_id: str) -> None:
    """One correction with its evidence and audit trail."""
    from invsync_pipeline.recon.review import show

    with _store(ctx) as store:
        row = show(store, correction_id)
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
    """Approve a held correction; the next pipeline run checks it against the systems and applies it once."""
    from invsync_pipeline.recon.review import approve
    from invsync_pipeline.resources import open_systems

    with _store(ctx) as store, open_systems(erp_resource(ctx), mes_resource(ctx)) as systems:
        row = approve(store, correction_id, by, note, effective_at, systems=systems)
    click.echo(f"approved {correction_id}: {row['target_system']} {row['quantity']} {row['unit']} "
               f"at {row['location']} ({row['material_number']}), effective {effective_at}; "
               "the next pipeline run applies it")  # fmt: skip


@review.command("reject")
@click.argument("correction_id")
@click.option("--by", required=True, help="The supervisor who decides.")
@click.option("--note", required=True, help="Why: it goes into the audit log.")
@click.pass_context
def review_reject(ctx: click.Context, correction_id: str, by: str, note: str) -> None:
    """Close a held correction without changing either system."""
    from invsync_pipeline.recon.review import reject

    with _store(ctx) as store:
        reject(store, correction_id, by, note)
    click.echo(f"rejected {correction_id}")


@review.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to reach it from phones on the LAN.")
@click.option("--port", default=8790, show_default=True, type=int)
@click.pass_context
def review_serve(ctx: click.Context, host: str, port: int) -> None:
    """The review page for supervisors (HTTP basic auth, password from INVSYNC_REVIEW_PASSWORD)."""
    import uvicorn

    from invsync_pipeline.review_page.app import create_app

    config = settings(ctx)
    app = create_app(config)  # refuses to start without a password
    click.echo(f"review page on http://{host}:{port}/ (links in alerts use {config.review.base_url})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
