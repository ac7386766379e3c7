"""Alerts: one store for all of them (the operational database) and one webhook (Slack / Teams compatible).

The table lives in the operational database (``ops/database.py``: ``ops.sqlite`` by default,
PostgreSQL by INVSYNC_OPS_DB_URL), beside the review queue, so sensors, runs and the CLI raise
alerts at once from several processes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import requests
import sqlalchemy as sa

from invsync_pipeline.ops.database import ops_engine
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)

_META = sa.MetaData()
# The columns of the first release's sqlite3 table, so an existing ops.sqlite is read as it is.
ALERTS = sa.Table(
    "alerts", _META,
    sa.Column("alert_id", sa.String(255), primary_key=True),  # one incident, one alert
    sa.Column("created_at", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),  # critical | warning | info
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("delivery", sa.Text, nullable=False),  # sent | failed: <why> | not configured
)  # fmt: skip


@contextlib.contextmanager
def _alerts_db(settings: Settings) -> Iterator[sa.Engine]:
    engine = ops_engine(settings.ops_url)
    try:
        _META.create_all(engine, checkfirst=True)
        yield engine
    finally:
        engine.dispose()


def raise_alert(settings: Settings, alert_id: str, severity: str, kind: str, subject: str, message: str) -> bool:
    """Record the alert and send it to the webhook; an alert_id seen before is not raised again
    (one incident, one alert). Returns True when it was new."""
    with _alerts_db(settings) as engine:
        with engine.connect() as conn:
            if conn.execute(sa.select(ALERTS.c.alert_id).where(ALERTS.c.alert_id == alert_id)).first():
                return False
        delivery = _send(settings.alert_webhook_url, severity, subject, message)
        row = {"alert_id": alert_id, "created_at": datetime.now(UTC).isoformat(), "severity": severity,
               "kind": kind, "subject": subject, "message": message, "delivery": delivery}  # fmt: skip
        with contextlib.suppress(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(ALERTS.insert().values(**row))  # another process raised it just now: one row
        return True


def alerts(settings: Settings) -> list[dict]:
    with _alerts_db(settings) as engine, engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(ALERTS).order_by(ALERTS.c.created_at)).mappings()]


def _send(url: str | None, severity: str, subject: str, message: str) -> str:
    if not url:
        return "not configured"
    # `text` is what Slack and Teams incoming webhooks both read.
    payload = {"text": f"[invsync {severity.upper()}] {subject}\n{message}"}
    try:
        response = requests.post(url, json=payload, timeout=5)
    except requests.RequestException as exc:
        log.warning("alert webhook failed: %s", exc)
        return f"failed: {exc.__class__.__name__}"
    if response.status_code >= 300:
        return f"failed: HTTP {response.status_code}"
    return "sent"
