"""Alerts: one store for all of them (ops.sqlite) and one webhook (Slack / Teams compatible)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import requests

from invsync_pipeline.ops.store import ops_db
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)


def raise_alert(settings: Settings, alert_id: str, severity: str, kind: str, subject: str, message: str) -> bool:
    """Record the alert and send it to the webhook; an alert_id seen before is not raised again
    (one incident, one alert). Returns True when it was new."""
    db = ops_db(settings)
    try:
        if db.execute("SELECT 1 FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone():
            return False
        delivery = _send(settings.alert_webhook_url, severity, subject, message)
        db.execute(
            "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert_id, datetime.now(UTC).isoformat(), severity, kind, subject, message, delivery),
        )
        return True
    finally:
        db.close()


def alerts(settings: Settings) -> list[dict]:
    db = ops_db(settings)
    try:
        cur = db.execute("SELECT * FROM alerts ORDER BY created_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        db.close()


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
