"""The `invsync` command: everything an operator runs by hand."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from invsync_pipeline.settings import ConfigError, load_settings


class _Errors(click.Group):
    """Turn the project's own errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):
        from invsync_pipeline.contract import ContractViolation
        from invsync_pipeline.messaging.connection import BrokerUnavailable
        from invsync_pipeline.messaging.topology import TopologyConflict

        try:
            return super().invoke(ctx)
        except (ConfigError, BrokerUnavailable, ContractViolation, TopologyConflict) as exc:
            click.echo(f"invsync: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Errors)
@click.option("--config", "config_path", envvar="INVSYNC_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default data/invsync.yaml).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """invsync: real-time ERP/MES inventory sync and hourly reconciliation."""
    ctx.obj = {"config_path": config_path}


def _settings(ctx: click.Context):
    return load_settings(ctx.obj.get("config_path"))


# --- contract ---------------------------------------------------------------------------------
@main.group()
def contract() -> None:
    """The v1 message contract."""


@contract.command("schema")
def contract_schema() -> None:
    """Print the JSON Schema of contract v1 for other teams."""
    from invsync_pipeline.contract import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@contract.command("validate")
@click.argument("file", type=click.File("rb"))
@click.pass_context
def contract_validate(ctx: click.Context, file) -> None:
    """Check a JSON Lines file of events; print each bad line with its reason."""
    from invsync_pipeline.contract import ContractLimits, try_parse_event

    limits = ContractLimits.from_settings(_settings(ctx))
    bad = 0
    total = 0
    for lineno, line in enumerate(file, start=1):
        if not line.strip():
            continue
        total += 1
        result = try_parse_event(line.rstrip(b"\r\n"), limits=limits)
        if not hasattr(result, "transaction_id"):
            bad += 1
            click.echo(f"line {lineno}: {result}")
    click.echo(f"{total - bad} valid, {bad} invalid")
    sys.exit(1 if bad else 0)


# --- topology ---------------------------------------------------------------------------------
@main.group()
def topology() -> None:
    """RabbitMQ exchanges, queues and bindings."""


@topology.command("apply")
@click.pass_context
def topology_apply(ctx: click.Context) -> None:
    """Declare the topology on the broker (safe to run again)."""
    from invsync_pipeline.messaging.topology import apply_topology

    topo = apply_topology(_settings(ctx))
    click.echo(f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, "
               f"{len(topo.bindings)} bindings")  # fmt: skip


@topology.command("export")
@click.pass_context
def topology_export(ctx: click.Context) -> None:
    """Print the topology as a RabbitMQ definitions JSON (rabbitmqctl import_definitions)."""
    from invsync_pipeline.messaging.topology import export_json

    click.echo(export_json(_settings(ctx)))


@topology.command("delete")
@click.option("--yes", is_flag=True, help="Really delete (messages in the queues are lost).")
@click.pass_context
def topology_delete(ctx: click.Context, yes: bool) -> None:
    """Delete every queue and exchange of the topology."""
    from invsync_pipeline.messaging.topology import delete_topology

    if not yes:
        raise click.UsageError("this deletes queues with their messages; pass --yes to go ahead")
    topo = delete_topology(_settings(ctx))
    click.echo(f"deleted {len(topo.queues)} queues and {len(topo.exchanges)} exchanges")


# --- publish (outbox) ---------------------------------------------------------------------------
@main.command("publish")
@click.argument("file", type=click.File("rb"))
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid lines even if some lines are invalid.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to spend publishing; what is left stays buffered for `invsync outbox flush`.")  # fmt: skip
@click.pass_context
def publish(ctx: click.Context, file, skip_invalid: bool, timeout: float) -> None:
    """Validate a JSON Lines file of events, buffer them in the outbox and publish them."""
    from invsync_pipeline.contract import ContractLimits, try_parse_event
    from invsync_pipeline.messaging.outbox import Outbox

    limits = ContractLimits.from_settings(_settings(ctx))
    events, bad = [], 0
    for lineno, line in enumerate(file, start=1):
        if not line.strip():
            continue
        result = try_parse_event(line.rstrip(b"\r\n"), limits=limits)
        if hasattr(result, "transaction_id"):
            events.append(result)
        else:
            bad += 1
            click.echo(f"line {lineno}: {result}", err=True)
    if bad and not skip_invalid:
        click.echo(f"{bad} invalid line(s); nothing of {file.name} was enqueued. Fix them, or pass "
                   "--skip-invalid to publish the valid lines only.", err=True)  # fmt: skip
        sys.exit(1)
    with _outbox_errors(), Outbox(_settings(ctx)) as box:
        result = box.publish(events, max_seconds=timeout)
    dup = f", {len(result.duplicates)} already buffered (ignored)" if result.duplicates else ""
    skipped = f", {bad} invalid skipped" if bad else ""
    click.echo(f"{result.enqueued.accepted} enqueued{dup}{skipped}; {result.published} published, "
               f"{result.pending} buffered in the outbox")  # fmt: skip
    if result.broker_error:
        click.echo(f"invsync: not published yet: {result.broker_error}", err=True)


@main.group()
def outbox() -> None:
    """The local buffer of events waiting for the broker's confirm."""


@outbox.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def outbox_status(ctx: click.Context, as_json: bool) -> None:
    """How many events wait in the outbox, since when, and for which routing keys."""
    from invsync_pipeline.messaging.outbox import Outbox

    with Outbox(_settings(ctx)) as box:
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

    with _outbox_errors(), Outbox(_settings(ctx)) as box:
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
    with _outbox_errors(), Outbox(_settings(ctx)) as box:
        result = box.relay(stop)
    click.echo(result.summary())


@contextlib.contextmanager
def _outbox_errors():
    """The outbox's own refusals (full, unroutable, no exchange) as one line and exit code 2."""
    from invsync_pipeline.messaging.outbox import OutboxError

    try:
        yield
    except OutboxError as exc:
        click.echo(f"invsync: {exc}", err=True)
        sys.exit(2)


# --- staging ----------------------------------------------------------------------------------
@main.group()
def staged() -> None:
    """The staged event log the ledger tap is drained into."""


@staged.command("drain")
@click.option("--seconds", type=float, default=None, help="Time budget (default staging.tick_max_seconds).")
@click.pass_context
def staged_drain(ctx: click.Context, seconds: float | None) -> None:
    """Drain the ledger tap once, as a sensor tick does (durable before ack)."""
    from invsync_pipeline.messaging.drain import drain_ledger_tap

    click.echo(drain_ledger_tap(_settings(ctx), max_seconds=seconds).summary())


@staged.command("status")
@click.pass_context
def staged_status(ctx: click.Context) -> None:
    """Segments and events per hour, and the size of the quarantine."""
    from invsync_pipeline.messaging.staged_log import StagedEventLog, partition_key_of_dir

    staged_log = StagedEventLog(_settings(ctx).staged_dir)
    hours = sorted(p.name for p in staged_log.events_dir.iterdir()) if staged_log.events_dir.is_dir() else []
    click.echo(f"{'hour (UTC)':<18} {'segments':>8} {'lines':>10}")
    for name in hours:
        key = partition_key_of_dir(name)
        segments = staged_log.segments(key)
        lines = sum(p.read_bytes().count(b"\n") for p in segments)
        click.echo(f"{key:<18} {len(segments):>8} {lines:>10}")
    click.echo(f"quarantined messages: {len(staged_log.quarantined())} (invsync staged quarantine to list)")


@staged.command("quarantine")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, body included.")
@click.pass_context
def staged_quarantine(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List quarantined messages with their reasons, newest last."""
    from invsync_pipeline.messaging.staged_log import StagedEventLog

    rows = StagedEventLog(_settings(ctx).staged_dir).quarantined()[-limit:]
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{row['received_at']}  {row['routing_key']}  {row['body_bytes']} bytes  {row['reason']}")


# --- reference MES --------------------------------------------------------------------------------
@main.group()
def mes() -> None:
    """The reference MES service and look-ups against any MES (INVSYNC_MES_URL, INVSYNC_MES_TOKEN)."""


def _mes_client(ctx: click.Context):
    from invsync_pipeline.reference.mes_client import ReferenceMesClient

    # The reference client: `mes faults` needs its admin API; `mes stock` is the same for any MES.
    return ReferenceMesClient.from_settings(_settings(ctx))


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

    settings = _settings(ctx)
    if not settings.mes_token:
        raise click.ClickException(
            "INVSYNC_MES_TOKEN is not set; the MES refuses to run without a bearer token. Set one, e.g. "
            "export INVSYNC_MES_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    path = db_path or str(settings.home / "mes.sqlite")
    publisher = MesPublisher(settings) if publish else None
    where = f"; backflushes published through {publisher.path}" if publisher else "; backflushes not published"
    click.echo(f"reference MES on http://{host}:{port} (data {path}){where}; OpenAPI at /openapi.json", err=True)
    serve(host, port, path, settings.mes_token, publish=publisher)


@mes.command("stock")
@click.option("--location", help="Only this location, e.g. WH01/RM01.")
@click.option("--material", "material_number", help="Only this material number.")
@click.option("--as-of", "as_of", help="Stock as of this RFC 3339 instant, e.g. 2026-11-24T11:00:00Z.")
@click.pass_context
def mes_stock(ctx: click.Context, location: str | None, material_number: str | None, as_of: str | None) -> None:
    """Print the MES's stock as a table."""
    from invsync_pipeline.sources.mes import MesError

    header = ("LOCATION", "MATERIAL", "UNIT", "QUANTITY")
    try:
        with _mes_client(ctx) as client:
            rows = [(r.location, r.material_number, r.unit, format(r.quantity, "f"))
                    for r in client.stock(location=location, material_number=material_number, as_of=as_of)]  # fmt: skip
    except MesError as exc:
        raise click.ClickException(str(exc)) from None
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
    from invsync_pipeline.sources.mes import MesError

    try:
        with _mes_client(ctx) as client:
            if error_rate is None and latency_ms is None and outage is None:
                faults = client.get_faults()
            else:
                faults = client.set_faults(error_rate=error_rate, latency_ms=latency_ms, outage=outage)
    except MesError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(faults, indent=2))


# --- ERP ------------------------------------------------------------------------------------------
@main.group()
def erp() -> None:
    """The ERP database: SAP-shaped tables at INVSYNC_ERP_URL (names from erp.tables in the config)."""


def _erp(ctx: click.Context):
    from invsync_pipeline.sources.erp import ErpDatabase

    return ErpDatabase.from_settings(_settings(ctx))


def _erp_failed(db, exc: Exception) -> click.ClickException:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return click.ClickException(
        f"ERP database {db.url.render_as_string(hide_password=True)}: {reason}\n"
        "Check INVSYNC_ERP_URL (or erp.url in the config); `invsync erp init` creates the tables."
    )


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None):
    from datetime import datetime

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 instant such as 2026-11-24T10:00:00Z") from None
    if ts.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no offset; add Z for UTC, e.g. {value}Z")
    return ts


@erp.command("init")
@click.pass_context
def erp_init(ctx: click.Context) -> None:
    """Create the ERP tables if missing (reference plant and tests; a real SAP replica is read-only)."""
    import sqlalchemy as sa

    db = _erp(ctx)
    try:
        db.create_schema()
    except sa.exc.DBAPIError as exc:
        raise _erp_failed(db, exc) from None
    click.echo(f"ERP tables ready at {db.url.render_as_string(hide_password=True)}")


@erp.command("stock")
@click.option("--as-of", "as_of", callback=_instant, help="RFC 3339 instant, e.g. 2026-11-24T10:00:00Z (default now).")
@click.option("--plant", help="Only this plant (the warehouse code, e.g. WH01).")
@click.pass_context
def erp_stock(ctx: click.Context, as_of, plant: str | None) -> None:
    """Print stock per material and location, now or as of an instant (like SAP's MB5B)."""
    import sqlalchemy as sa

    db = _erp(ctx)
    try:
        frame = db.stock_as_of(as_of, plant)
    except sa.exc.DBAPIError as exc:
        raise _erp_failed(db, exc) from None
    if frame.empty:
        click.echo("no stock")
        return
    click.echo(frame[["material", "location", "unit", "quantity"]].to_string(index=False))


@erp.command("post")
@click.argument("file", type=click.File("rb"))
@click.pass_context
def erp_post(ctx: click.Context, file) -> None:
    """Post a JSON Lines file of contract events as material documents; bad lines are reported."""
    import sqlalchemy as sa

    from invsync_pipeline.contract import ContractViolation, try_parse_event
    from invsync_pipeline.sources.erp import ErpPostingError

    db = _erp(ctx)
    posted = duplicates = bad = 0
    for lineno, line in enumerate(file, start=1):
        if not line.strip():
            continue
        result = try_parse_event(line.rstrip(b"\r\n"))
        if isinstance(result, ContractViolation):
            bad += 1
            click.echo(f"line {lineno}: {result}")
            continue
        try:
            document = db.post(result)
        except ErpPostingError as exc:
            bad += 1
            click.echo(f"line {lineno}: {exc}")
            continue
        except sa.exc.DBAPIError as exc:
            raise _erp_failed(db, exc) from None
        if document.created:
            posted += 1
        else:
            duplicates += 1
    click.echo(f"{posted} posted, {duplicates} already posted, {bad} refused")
    sys.exit(1 if bad else 0)


# --- operations -----------------------------------------------------------------------------------
@main.command("queues")
@click.option("--record/--no-record", default=False, help="Also keep the sample and raise alerts, as the sensor does.")
@click.pass_context
def queues(ctx: click.Context, record: bool) -> None:
    """What every queue of the topology holds (ready, unacked, in its dead-letter path, total),
    and what is wrong with them; "-" is a count the source cannot see."""
    from invsync_pipeline.ops.queue_health import check_queues, evaluate, sample

    settings = _settings(ctx)
    if record:
        samples, findings, raised = check_queues(settings)
    else:
        samples = sample(settings)
        findings, raised = evaluate(settings, samples), []
    flags = {s.queue: "(not declared)" for s in samples if s.source == "missing"}
    flags.update({f.queue: "STRANDED" for f in findings if f.rule == "stranded"})

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    click.echo(f"{'queue':<40} {'role':<8} {'ready':>8} {'unacked':>8} {'dead-letter':>11} {'total':>8} "
               f"{'consumers':>9}  stranded")  # fmt: skip
    for s in samples:
        line = (f"{s.queue:<40} {s.role:<8} {s.ready:>8} {count(s.unacked):>8} {count(s.dead_letter):>11} "
                f"{count(s.total):>8} {s.consumers:>9}  {flags.get(s.queue, '')}")  # fmt: skip
        click.echo(line.rstrip())
    click.echo(f"counts from: {', '.join(sorted({s.source for s in samples if s.source != 'missing'})) or '-'}")
    for f in findings:
        click.echo(f"{f.severity.upper()} {f.rule}: {f.message}")
    if raised:
        click.echo(f"{len(raised)} new alert(s) raised")


@main.command("alerts")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def alerts_list(ctx: click.Context, limit: int) -> None:
    """The latest alerts and whether the webhook got them."""
    from invsync_pipeline.recon.alerts import alerts

    for a in alerts(_settings(ctx))[-limit:]:
        click.echo(f"{a['created_at'][:19]}  {a['severity']:<8} {a['kind']:<20} {a['subject']}  [{a['delivery']}]")


# --- dead letters ----------------------------------------------------------------------------------
def _dlq_filters(tx: tuple[str, ...], reason: str | None, material: str | None, since, until):
    from invsync_pipeline.messaging.dlq import Filters

    return Filters(reason=reason, material=material, since=since, until=until, transaction_ids=tuple(tx))


def _dlq_options(fn):
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


@main.group()
def dlq() -> None:
    """The parking queue: what failed every retry, was invalid, or expired."""


@dlq.command("list")
@_dlq_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_list(ctx, tx, reason, material, since, until, as_json) -> None:
    """Parked messages with their reasons (nothing is removed)."""
    from invsync_pipeline.messaging.dlq import browse

    parked = browse(_settings(ctx), _dlq_filters(tx, reason, material, since, until))
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
def dlq_show(ctx, transaction_id) -> None:
    """One parked message: headers and body."""
    from invsync_pipeline.messaging.amqp_headers import headers_as_json
    from invsync_pipeline.messaging.dlq import browse

    found = browse(_settings(ctx), _dlq_filters((transaction_id,), None, None, None, None))
    if not found:
        click.echo(f"invsync: {transaction_id} is not in the parking queue", err=True)
        sys.exit(2)
    for p in found:
        click.echo(json.dumps({**p.summary(), "headers": headers_as_json(p.headers),
                               "body": p.body.decode("utf-8", "replace")}, indent=2))  # fmt: skip


@dlq.command("replay")
@_dlq_options
@click.option("--all", "everything", is_flag=True, help="Replay every parked message (no filter needed).")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--by", default=None, help="Who replays (default: the login name).")
@click.pass_context
def dlq_replay(ctx, tx, reason, material, since, until, everything, dry_run, by) -> None:
    """Send parked messages back to the queue that failed them; invalid ones are refused."""
    from invsync_pipeline.messaging.dlq import replay

    filters = _dlq_filters(tx, reason, material, since, until)
    if not everything and filters == _dlq_filters((), None, None, None, None):
        raise click.UsageError("name what to replay (--tx, --reason, --material, --since/--until) or pass --all")
    outcome = replay(_settings(ctx), filters, _actor(by), dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    for p in outcome.replayed:
        click.echo(f"{verb} {p.transaction_id} -> {p.failed_queue or 'its plant queue'}")
    for p, why in outcome.refused:
        click.echo(f"refused {p.transaction_id}: {why} (it stays parked)")
    click.echo(f"{len(outcome.replayed)} {verb}, {len(outcome.refused)} refused")
    sys.exit(1 if outcome.refused else 0)


@dlq.command("discard")
@_dlq_options
@click.option("--note", required=True, help="Why: kept in the audit with the whole message.")
@click.option("--dry-run", is_flag=True)
@click.option("--by", default=None)
@click.pass_context
def dlq_discard(ctx, tx, reason, material, since, until, note, dry_run, by) -> None:
    """Remove parked messages for good (the audit keeps each whole, with who and why)."""
    from invsync_pipeline.messaging.dlq import discard

    filters = _dlq_filters(tx, reason, material, since, until)
    if filters == _dlq_filters((), None, None, None, None):
        raise click.UsageError("name what to discard (--tx, --reason, --material, --since/--until)")
    try:
        gone = discard(_settings(ctx), filters, _actor(by), note, dry_run=dry_run)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{len(gone)} {'would be discarded' if dry_run else 'discarded'}")


# --- onboarding a plant ----------------------------------------------------------------------------
@main.command("onboard")
@click.option("--at", "cutoff", required=True, callback=_instant,
              help="The cut-off, a whole hour (RFC 3339, e.g. 2026-12-01T06:00:00Z): the first reconciled hour.")
@click.option("--from-erp", is_flag=True, help="The opening balances are the ERP's stock as of the cut-off.")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="The opening balances from a CSV: material_number, material_type, unit, location, quantity.")
@click.option("--dry-run", is_flag=True, help="Say what would be loaded; write nothing.")
@click.option("--overwrite", is_flag=True, help="Also set keys the MES already holds with another balance.")
@click.pass_context
def onboard_plant(ctx: click.Context, cutoff, from_erp: bool, csv_path: str | None, dry_run: bool,
                  overwrite: bool) -> None:  # fmt: skip
    """Load a plant's material master and opening balances into the MES at a cut-off (idempotent)."""
    from pathlib import Path

    from invsync_pipeline.onboarding import OnboardingError, onboard
    from invsync_pipeline.resources import ErpResource, MesResource

    path = ctx.obj.get("config_path")
    mes = MesResource(config_path=path).open("live")
    erp = ErpResource(config_path=path).open() if from_erp else None
    try:
        result = onboard(mes, cutoff, erp=erp, csv_path=Path(csv_path) if csv_path else None, dry_run=dry_run,
                         overwrite=overwrite)  # fmt: skip
    except OnboardingError as exc:
        click.echo(f"invsync: {exc}", err=True)
        sys.exit(2)
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


# --- rules and review ----------------------------------------------------------------------------
@main.group()
def rules() -> None:
    """The source-of-truth rules file (data/rules.yaml)."""


@rules.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def rules_check(ctx: click.Context, path: str | None) -> None:
    """Validate a rules file (default: the one in use); exit 2 with the field and value when it is wrong."""
    from invsync_pipeline.recon.rules import RulesError, load_rules

    try:
        loaded = load_rules(path or _settings(ctx).reconciliation.rules_path)
    except RulesError as exc:
        click.echo(f"invsync: {exc}", err=True)
        sys.exit(2)
    click.echo(f"ok: {len(loaded.source_of_truth)} source-of-truth rules; always review: "
               f"{', '.join(loaded.always_review)}")  # fmt: skip


@contextlib.contextmanager
def _warehouse(ctx: click.Context, read_only: bool = False):
    """The DuckDB warehouse, or a clear message when a pipeline run holds the write lock."""
    import duckdb

    from invsync_pipeline.warehouse import open_warehouse

    path = _settings(ctx).warehouse_path
    if not path.exists():
        click.echo(f"invsync: no warehouse at {path} yet; run the pipeline first (make demo)", err=True)
        sys.exit(2)
    try:
        with open_warehouse(path, read_only=read_only) as conn:
            yield conn
    except duckdb.IOException as exc:
        click.echo(f"invsync: the warehouse is busy ({exc}); a pipeline run is writing, try again shortly", err=True)
        sys.exit(2)


@main.group()
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


def _review_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from invsync_pipeline.recon.corrections import ReviewError

        try:
            return fn(*args, **kwargs)
        except ReviewError as exc:
            click.echo(f"invsync: {exc}", err=True)
            sys.exit(2)

    return wrapper


@review.command("show")
@click.argument("correction_id")
@click.pass_context
@_review_errors
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
@_review_errors
def review_approve(ctx: click.Context, correction_id: str, by: str, note: str | None, effective_at: str) -> None:
    """Apply a held correction and record the approval."""
    from datetime import UTC, datetime, timedelta

    from invsync_pipeline.recon.review import approve, show
    from invsync_pipeline.resources import ErpResource, MesResource, open_systems

    settings = _settings(ctx)
    path = ctx.obj.get("config_path")
    with _warehouse(ctx) as conn, open_systems(ErpResource(config_path=path), MesResource(config_path=path)) as systems:
        when = datetime.now(UTC)
        if effective_at == "next-hour":
            when = show(conn, correction_id)["partition_hour"] + timedelta(hours=1)
        row = approve(settings, conn, systems, correction_id, by, note, when)
    click.echo(f"approved {correction_id}: {row['target_system']} {row['quantity']:+} {row['unit']} "
               f"at {row['location']} ({row['material_number']}), effective {when:%Y-%m-%d %H:%M} UTC")  # fmt: skip


@review.command("reject")
@click.argument("correction_id")
@click.option("--by", required=True, help="The supervisor who decides.")
@click.option("--note", required=True, help="Why: it goes into the audit log.")
@click.pass_context
@_review_errors
def review_reject(ctx: click.Context, correction_id: str, by: str, note: str) -> None:
    """Close a held correction without changing either system."""
    from invsync_pipeline.recon.review import reject

    with _warehouse(ctx) as conn:
        reject(conn, correction_id, by, note)
    click.echo(f"rejected {correction_id}")


# --- plant simulator ------------------------------------------------------------------------------
def _start_hour(_ctx: click.Context, _param: click.Parameter, value: str | None):
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO hour such as 2026-11-24T08:00Z") from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)  # no offset: read as UTC
    if ts != ts.replace(minute=0, second=0, microsecond=0):
        raise click.BadParameter(f"{value!r} is not a whole hour; use e.g. {ts:%Y-%m-%dT%H}:00Z")
    return ts


@main.command("simulate")
@click.option("--hours", type=click.IntRange(1), default=2, show_default=True, help="Simulated hours.")
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed gives the same events.")
@click.option("--start", callback=_start_hour,
              help="First hour in UTC, e.g. 2026-11-24T08:00Z (default: the last --hours full hours).")  # fmt: skip
@click.option("--faults", default="default", show_default=True, help="default, none, or a YAML fault profile.")
@click.option("--plant-size", type=click.Choice(["small", "medium"]), default="small", show_default=True)
@click.option("--embedded-mes", is_flag=True, help="Run the reference MES in this process (the default).")
@click.option("--mes-url", help="Use the MES running there (token: INVSYNC_MES_TOKEN), e.g. `invsync mes serve`.")
@click.option("--with-worker/--no-worker", default=True, show_default=True,
              help="Run the sync worker until the plant queues are drained.")  # fmt: skip
@click.option("--verify", is_flag=True,
              help="Compare ERP and MES stock; exit 1 if a material-location without a fault differs.")  # fmt: skip
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the worker to catch up at each checkpoint.")  # fmt: skip
@click.pass_context
def simulate(ctx: click.Context, hours: int, seed: int, start, faults: str, plant_size: str, embedded_mes: bool,
             mes_url: str | None, with_worker: bool, verify: bool, timeout: float) -> None:  # fmt: skip
    """Simulate plant hours: ERP postings and MES backflushes with injected faults, and their ground truth."""
    from invsync_pipeline.messaging.outbox import OutboxError
    from invsync_pipeline.reference.simulator import FaultProfileError, SimulationError
    from invsync_pipeline.reference.simulator import simulate as run_simulation
    from invsync_pipeline.sources.mes import MesError

    if embedded_mes and mes_url:
        raise click.UsageError("give either --embedded-mes or --mes-url, not both")
    if not with_worker and verify:
        click.echo("invsync: --no-worker leaves the MES without the ERP's events; --verify will show that", err=True)
    try:
        report = run_simulation(_settings(ctx), seed=seed, hours=hours, start=start, plant_size=plant_size,
                                faults=faults, mes_url=mes_url, with_worker=with_worker, verify=verify,
                                drain_timeout=timeout)  # fmt: skip
    except (FaultProfileError, SimulationError, MesError, OutboxError) as exc:
        click.echo(f"invsync: {exc}", err=True)
        sys.exit(2)
    summary, sim, r = report.summary(), report.sim, report.result
    plant = f"{sim.plant.size} plant ({len(sim.plant.materials)} materials, {', '.join(sim.plant.warehouses)})"
    click.echo(f"simulated {sim.hours} h from {sim.start:%Y-%m-%d %H:%M} UTC, seed {sim.seed}, {plant}, "
               f"faults: {sim.profile.name}")  # fmt: skip
    click.echo(f"  {r.events} events: {r.erp_postings} ERP postings, {r.backflushes} MES backflushes; "
               f"{r.published} messages published in {r.seconds:.1f} s")  # fmt: skip
    faults_text = ", ".join(f"{k} {v}" for k, v in summary["faults"].items()) or "none"
    click.echo(f"  faults injected: {faults_text}")
    click.echo(f"  ground truth: {r.truth_path} (simulation_runs, injected_faults, planned_events)")
    if r.unpublished_backflushes:
        click.echo(f"invsync: the MES did not publish {len(r.unpublished_backflushes)} backflush(es); start it with "
                   "`invsync mes serve --publish`", err=True)  # fmt: skip
    failed = False
    if report.comparison is not None:
        c = report.comparison
        off_truth = c[c["fault_touched"] & ~c["matches_ground_truth"]]
        click.echo(f"verify: {len(c)} material-location-units, {int((c['difference'] != 0).sum())} differ; "
                   f"{len(report.unexpected)} without a fault differ, {len(off_truth)} faulted differ from the "
                   "ground truth")  # fmt: skip
        for title, rows in (("differ without a fault", report.unexpected), ("not as the ground truth says", off_truth)):
            if len(rows):
                click.echo(f"  {title}:\n" + rows.to_string(index=False))
        failed = bool(len(report.unexpected))
    click.echo(json.dumps(summary))
    sys.exit(1 if failed else 0)


# --- demo -----------------------------------------------------------------------------------------
@main.command("demo")
@click.option("--hours", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--plant-size", type=click.Choice(["small", "medium"]), default="small", show_default=True)
@click.option("--faults", default="default", show_default=True, help="default | none | a profile YAML file")
def demo(hours: int, seed: int, plant_size: str, faults: str) -> None:
    """Everything on the embedded defaults: reference MES, ERP tables, RabbitMQ, worker, sensor,
    hourly reconciliation; prints where the report is and how the findings match the injected faults.

    Starts afresh in INVSYNC_HOME (default data/runtime) and the broker namespace `demo.`."""
    import logging

    from invsync_pipeline.reference.demo import as_json_line, describe, run_demo

    logging.basicConfig(level=logging.ERROR)  # the worker's per-message logs would drown the summary
    result = run_demo(hours=hours, seed=seed, plant_size=plant_size, faults=faults,
                      log=lambda line: click.echo(f"invsync demo: {line}"))  # fmt: skip
    for line in describe(result):
        click.echo(line)
    click.echo("next: make dev, then open http://127.0.0.1:3000 (assets, checks, runs, metadata)")
    click.echo(json.dumps(as_json_line(result)))


# --- sync worker ----------------------------------------------------------------------------------
@main.command("sync-worker")
@click.option("--queue", "queues", multiple=True, help="Only these work queues (default: all plants).")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until SIGTERM).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def sync_worker(ctx: click.Context, queues: tuple[str, ...], seconds: float | None, log_level: str) -> None:
    """Apply the plant queues to the MES in real time (SIGTERM finishes in-flight work, acks, exits)."""
    import logging

    from invsync_pipeline.resources import MesResource
    from invsync_pipeline.sync.worker import SyncWorker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(ctx)
    mes = MesResource(config_path=ctx.obj.get("config_path"))
    worker = SyncWorker(settings, mes.open("live"), shadow=mes.open("shadow"), queues=list(queues) or None)
    worker.install_signal_handlers()
    stats = worker.run(max_seconds=seconds)
    click.echo(json.dumps(stats.__dict__))


def _register_cutover() -> None:
    from invsync_pipeline.cli_cutover import cutover

    main.add_command(cutover)


_register_cutover()

if __name__ == "__main__":
    main()
