"""Queue health: sample every queue of the topology, keep the samples, and raise one alert per incident.

Samples come from the RabbitMQ management HTTP API where it is enabled (ready and unacked
counts) and from passive declares where it is not (ready count and consumers). The rules,
with thresholds from the `monitoring` section of the config:

- `too_deep`: a queue holds more ready messages than its role allows (parking: any at all);
- `no_consumer`: a plant queue or the ledger tap has messages and nobody consuming them
  (a stopped worker or a stopped sensor);
- `growing`: a plant queue or the tap grew in each of the last N samples and is above a floor
  (a consumer that is alive but too slow, or stuck).

An incident opens with one alert and stays open, silent, while its condition holds; it closes
when the condition clears, and a new occurrence is a new incident.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

import pika
import pika.exceptions
import requests

from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.topology import build_topology
from invsync_pipeline.ops.store import ops_db
from invsync_pipeline.recon.alerts import raise_alert
from invsync_pipeline.settings import Settings


@dataclass(frozen=True)
class QueueSample:
    queue: str
    role: str
    ready: int
    unacked: int | None
    consumers: int
    source: str


@dataclass(frozen=True)
class Finding:
    queue: str
    rule: str
    severity: str
    message: str


def sample(settings: Settings) -> list[QueueSample]:
    """The current depth of every queue of the topology."""
    topo = build_topology(settings)
    roles = {q.name: q.role for q in topo.queues}
    api = _from_management_api(settings, roles)
    if api is not None:
        return api
    samples = []
    conn = connect(settings)
    try:
        for name, role in roles.items():
            channel = conn.channel()
            try:
                ok = channel.queue_declare(name, passive=True).method
                samples.append(QueueSample(name, role, ok.message_count, None, ok.consumer_count, "passive_declare"))
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                samples.append(QueueSample(name, role, 0, None, 0, "missing"))
    finally:
        conn.close()
    return samples


def _from_management_api(settings: Settings, roles: dict[str, str]) -> list[QueueSample] | None:
    params = pika.URLParameters(settings.amqp_url)
    creds = params.credentials
    vhost = urllib.parse.quote(params.virtual_host, safe="")
    url = f"http://{params.host}:{settings.monitoring.management_port}/api/queues/{vhost}"
    try:
        response = requests.get(url, auth=(creds.username, creds.password), timeout=2)
        if response.status_code != 200:
            return None
        rows = {row["name"]: row for row in response.json()}
    except (requests.RequestException, ValueError):
        return None  # not enabled here: passive declares instead
    return [
        QueueSample(
            name,
            role,
            int(rows.get(name, {}).get("messages_ready", 0)),
            int(rows.get(name, {}).get("messages_unacknowledged", 0)),
            int(rows.get(name, {}).get("consumers", 0)),
            "management_api",
        )  # fmt: skip
        for name, role in roles.items()
    ]


def record(settings: Settings, samples: list[QueueSample], at: datetime | None = None) -> None:
    at_text = (at or datetime.now(UTC)).isoformat()
    db = ops_db(settings)
    try:
        db.executemany(
            "INSERT INTO queue_samples VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(at_text, s.queue, s.role, s.ready, s.unacked, s.consumers, s.source) for s in samples],
        )
    finally:
        db.close()


def evaluate(settings: Settings, samples: list[QueueSample]) -> list[Finding]:
    """The rules above, over the latest samples and the recorded history."""
    cfg = settings.monitoring
    findings = []
    db = ops_db(settings)
    try:
        for s in samples:
            limit = cfg.max_ready.get(s.role)
            if limit is not None and s.ready > limit:
                severity = "critical" if s.role == "parking" else "warning"
                message = f"{s.ready} messages ready in {s.queue} ({s.role}); the limit is {limit}"
                findings.append(Finding(s.queue, "too_deep", severity, message))
            if s.role in ("work", "tap") and s.ready > 0 and s.consumers == 0:
                who = "sync worker (invsync sync-worker)" if s.role == "work" else "ledger_tap_sensor"
                findings.append(Finding(s.queue, "no_consumer", "critical",
                                        f"{s.ready} messages wait in {s.queue} and nothing consumes them: "
                                        f"is the {who} running?"))  # fmt: skip
            if s.role in ("work", "tap") and s.ready >= cfg.min_growth_depth:
                history = [row[0] for row in db.execute(
                    "SELECT ready FROM queue_samples WHERE queue = ? ORDER BY sampled_at DESC LIMIT ?",
                    (s.queue, cfg.growth_samples + 1),
                ).fetchall()][::-1]  # fmt: skip
                if len(history) > cfg.growth_samples and all(b > a for a, b in zip(history, history[1:], strict=False)):
                    findings.append(Finding(s.queue, "growing", "warning",
                                            f"{s.queue} grew in each of the last {cfg.growth_samples} samples, "
                                            f"now {s.ready}: its consumer is too slow or stuck"))  # fmt: skip
    finally:
        db.close()
    return findings


def open_and_close_incidents(settings: Settings, findings: list[Finding], at: datetime | None = None) -> list[str]:
    """One alert when an incident opens; incidents whose condition cleared are closed. Returns
    the alert ids raised now."""
    now = (at or datetime.now(UTC)).isoformat()
    current = {f"queue:{f.queue}:{f.rule}": f for f in findings}
    raised = []
    db = ops_db(settings)
    try:
        open_keys = {row[0] for row in db.execute("SELECT incident_key FROM incidents WHERE closed_at IS NULL")}
        for key in open_keys - set(current):
            db.execute("UPDATE incidents SET closed_at = ? WHERE incident_key = ? AND closed_at IS NULL", (now, key))
        for key, finding in current.items():
            if key in open_keys:
                continue
            alert_id = f"{key}:{now}"
            db.execute("INSERT INTO incidents VALUES (?, ?, NULL, ?)", (key, now, alert_id))
            if raise_alert(settings, alert_id, finding.severity, f"queue_{finding.rule}", finding.message,
                           "See docs/runbook.md for what to do."):  # fmt: skip
                raised.append(alert_id)
    finally:
        db.close()
    return raised


BROKER_INCIDENT = "broker:unreachable"


def broker_incident(settings: Settings, error: str | None, at: datetime | None = None) -> str | None:
    """Open the broker-unreachable incident (one alert) when ``error``, close it when None.
    Returns the alert id raised now, if any: each outage is its own incident and alert."""
    now = (at or datetime.now(UTC)).isoformat()
    db = ops_db(settings)
    try:
        is_open = db.execute(
            "SELECT 1 FROM incidents WHERE incident_key = ? AND closed_at IS NULL", (BROKER_INCIDENT,)
        ).fetchone()
        if error is None:
            if is_open:
                db.execute("UPDATE incidents SET closed_at = ? WHERE incident_key = ? AND closed_at IS NULL",
                           (now, BROKER_INCIDENT))  # fmt: skip
            return None
        if is_open:
            return None
        alert_id = f"{BROKER_INCIDENT}:{now}"
        db.execute("INSERT INTO incidents VALUES (?, ?, NULL, ?)", (BROKER_INCIDENT, now, alert_id))
    finally:
        db.close()
    raise_alert(settings, alert_id, "critical", "broker_unreachable", "RabbitMQ is unreachable", error)
    return alert_id


def check_queues(settings: Settings) -> tuple[list[QueueSample], list[Finding], list[str]]:
    """Sample, record, evaluate, alert: one monitoring pass."""
    samples = sample(settings)
    broker_incident(settings, None)
    record(settings, samples)
    findings = evaluate(settings, samples)
    return samples, findings, open_and_close_incidents(settings, findings)
