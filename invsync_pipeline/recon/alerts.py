"""Alerts: one table for all of them, and one webhook (Slack / Teams compatible) from the environment."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import duckdb
import requests

log = logging.getLogger(__name__)
WEBHOOK_ENV = "INVSYNC_ALERT_WEBHOOK_URL"


def raise_alert(
    conn: duckdb.DuckDBPyConnection, alert_id: str, severity: str, kind: str, subject: str, message: str
) -> bool:
    """Record the alert and send it to the webhook; an alert_id seen before is not raised again
    (one incident, one alert). Returns True when it was new."""
    if conn.execute("SELECT 1 FROM recon.alerts WHERE alert_id = ?", [alert_id]).fetchone():
        return False
    delivery = _send(severity, subject, message)
    conn.execute(
        "INSERT INTO recon.alerts VALUES (?, ?, ?, ?, ?, ?, ?)",
        [alert_id, datetime.now(UTC), severity, kind, subject, message, delivery],
    )
    return True


def _send(severity: str, subject: str, message: str) -> str:
    url = os.environ.get(WEBHOOK_ENV)
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
