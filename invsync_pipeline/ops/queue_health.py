"""Queue health: sample every queue of the topology, keep the samples, and raise one alert per incident.

A sample counts everything a queue holds: ready, unacked, and what waits in its dead-letter path
(a quorum queue with at-least-once dead-lettering keeps a dead-lettered message, neither ready
nor unacked, until the dead-letter exchange's queues confirm it; docs/runbook.md, section 8).
The counts come from the best source this machine has:

1. the RabbitMQ management HTTP API where it is enabled (``messages_dlx`` for quorum queues);
2. else ``rabbitmqctl list_queues``, when rabbitmqctl can reach the broker's node
   (``monitoring.rabbitmqctl_node``; by default the local broker's node). Its CLI refuses the
   ``messages_dlx`` item (3.10-3.13), so the dead-letter path is ``messages`` minus ready and
   unacked: for quorum queues ``messages`` includes the dead-letter path, for classic queues
   it is ready + unacked;
3. else passive declares: ready and consumers only (for a quorum queue, a passive declare's
   message count is its ready messages), so unacked and dead-letter path are unknown and the
   sample's ``source`` says so.

The rules, with thresholds from the ``monitoring`` section of the config:

- `too_deep`: a queue holds more ready messages than its role allows (parking: any at all);
- `no_consumer`: a plant queue or the ledger tap has messages and nobody consuming them
  (a stopped worker or a stopped sensor);
- `growing`: a plant queue or the tap grew in each of the last N samples and is above a floor
  (a consumer that is alive but too slow, or stuck);
- `stranded`: a queue that dead-letters (a retry tier, a plant queue, the tap) has held messages
  in its dead-letter path in every sample for ``stranded_after_seconds``; where only totals are
  known, it has held messages, never fewer, for longer than its TTL plus that margin.

An incident opens with one alert and stays open, silent, while its condition holds; it closes
when the condition clears, and a new occurrence is a new incident.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pika
import pika.exceptions
import requests

from invsync_pipeline.messaging.connection import connect
from invsync_pipeline.messaging.topology import Topology, build_topology
from invsync_pipeline.ops.alerts import raise_alert
from invsync_pipeline.ops.store import ops_db
from invsync_pipeline.settings import Settings

log = logging.getLogger(__name__)

PASSIVE_SOURCE = "passive_declare: ready only, unacked and dead-letter path unknown"


@dataclass(frozen=True)
class QueueSample:
    queue: str
    role: str
    ready: int
    unacked: int | None
    consumers: int
    source: str
    # Dead-lettered but not yet confirmed by the dead-letter exchange's queues (quorum queues
    # with at-least-once dead-lettering): neither ready nor unacked. None: the source can't see it.
    dead_letter: int | None = None
    # Everything the queue holds: ready + unacked + dead_letter. None: unknown.
    total: int | None = None


@dataclass(frozen=True)
class Finding:
    queue: str
    rule: str
    severity: str
    message: str


def sample(settings: Settings) -> list[QueueSample]:
    """What every queue of the topology holds now, from the best source available."""
    topo = build_topology(settings)
    roles = {q.name: q.role for q in topo.queues}
    for source in (_from_management_api, _from_rabbitmqctl):
        samples = source(settings, roles)
        if samples is not None:
            return samples
    samples = []
    conn = connect(settings)
    try:
        for name, role in roles.items():
            channel = conn.channel()
            try:
                ok = channel.queue_declare(name, passive=True).method
                samples.append(QueueSample(name, role, ok.message_count, None, ok.consumer_count, PASSIVE_SOURCE))
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                samples.append(QueueSample(name, role, 0, None, 0, "missing"))
    finally:
        conn.close()
    return samples


def _counted(name: str, role: str, row: dict | None, source: str) -> QueueSample:
    """A sample from a row of list_queues or the management API."""
    if row is None:
        return QueueSample(name, role, 0, None, 0, "missing")
    ready, unacked = int(row.get("messages_ready") or 0), int(row.get("messages_unacknowledged") or 0)
    total = row.get("messages")
    total = ready + unacked if total is None else int(total)
    dead_letter = row.get("messages_dlx")
    # The CLI has no messages_dlx item: a quorum queue's `messages` includes its dead-letter path.
    dead_letter = max(0, total - ready - unacked) if dead_letter is None else int(dead_letter)
    total = max(total, ready + unacked + dead_letter)
    return QueueSample(name, role, ready, unacked, int(row.get("consumers") or 0), source, dead_letter, total)


def _from_management_api(settings: Settings, roles: dict[str, str]) -> list[QueueSample] | None:
    for node in settings.amqp_urls:  # any node of a cluster answers for every queue
        params = pika.URLParameters(node)
        creds = params.credentials
        vhost = urllib.parse.quote(params.virtual_host, safe="")
        url = f"http://{params.host}:{settings.monitoring.management_port}/api/queues/{vhost}"
        try:
            response = requests.get(url, auth=(creds.username, creds.password), timeout=2)
            if response.status_code != 200:
                continue
            rows = {row["name"]: row for row in response.json()}
        except (requests.RequestException, ValueError):
            continue
        return [_counted(name, role, rows.get(name), "management_api") for name, role in roles.items()]
    return None  # not enabled here: rabbitmqctl or passive declares instead


def rabbitmqctl_target(settings: Settings) -> tuple[str, str | None] | None:
    """(rabbitmqctl path, node name or None for its default node), or None when rabbitmqctl is
    off, not installed, or the broker's node is not known: without ``monitoring.rabbitmqctl_node``
    only a broker on this machine's port 5672 is taken to be rabbitmqctl's default node."""
    cfg = settings.monitoring
    if not cfg.rabbitmqctl:
        return None
    # On the PATH, else in an sbin directory (not on every PATH).
    path = shutil.which("rabbitmqctl") or shutil.which(
        "rabbitmqctl", path=os.pathsep.join(("/usr/sbin", "/usr/local/sbin"))
    )
    if path is None:
        return None
    if cfg.rabbitmqctl_node:
        return path, cfg.rabbitmqctl_node
    params = pika.URLParameters(settings.amqp_urls[0])
    local = {"127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn()}
    return (path, None) if params.host in local and params.port == 5672 else None


def _from_rabbitmqctl(settings: Settings, roles: dict[str, str]) -> list[QueueSample] | None:
    target = rabbitmqctl_target(settings)
    if target is None:
        return None
    path, node = target
    timeout = settings.monitoring.rabbitmqctl_timeout_seconds
    command = [path, *(["-n", node] if node else []), "-q", "list_queues",
               "-p", pika.URLParameters(settings.amqp_urls[0]).virtual_host,
               "name", "messages", "messages_ready", "messages_unacknowledged", "consumers",
               "--formatter", "json", "--timeout", str(max(1, int(timeout)))]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5)
        if done.returncode != 0:
            raise ValueError(done.stderr.strip()[-300:] or f"exit {done.returncode}")
        rows = {row["name"]: row for row in json.loads(done.stdout)}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        # Not allowed to run it, no cookie, another node name: passive declares instead.
        log.info("rabbitmqctl list_queues on %s failed (%s); falling back to passive declares", node, exc)
        return None
    return [_counted(name, role, rows.get(name), "rabbitmqctl") for name, role in roles.items()]


def record(settings: Settings, samples: list[QueueSample], at: datetime | None = None) -> None:
    at_text = (at or datetime.now(UTC)).isoformat()
    db = ops_db(settings)
    try:
        db.executemany(
            """INSERT INTO queue_samples
                   (sampled_at, queue, role, ready, unacked, consumers, source, dead_letter, total)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [(at_text, s.queue, s.role, s.ready, s.unacked, s.consumers, s.source, s.dead_letter, s.total)
             for s in samples],
        )  # fmt: skip
    finally:
        db.close()


def evaluate(settings: Settings, samples: list[QueueSample], at: datetime | None = None) -> list[Finding]:
    """The rules above, over the latest samples (taken ``at``, default now) and the recorded
    history before them."""
    cfg = settings.monitoring
    at = at or datetime.now(UTC)
    ttls = _ttls_of_dead_lettering_queues(build_topology(settings))
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
            held = s.dead_letter > 0 if s.dead_letter is not None else bool(s.total)
            if s.queue in ttls and held:
                ttl_ms = ttls[s.queue]
                margin = timedelta(seconds=cfg.stranded_after_seconds)
                # Only totals known: look back past the TTL; dead-letter path known: the margin.
                lookback = margin + timedelta(milliseconds=ttl_ms or 0) if s.dead_letter is None else margin
                series = [*_recorded(db, s, at - lookback - timedelta(minutes=5), at), (at, s)]
                if (finding := find_stranded(series, ttl_ms, margin)) is not None:
                    findings.append(finding)
    finally:
        db.close()
    return findings


def find_stranded(
    series: Sequence[tuple[datetime, QueueSample]], ttl_ms: int | None, margin: timedelta
) -> Finding | None:
    """The `stranded` rule over one queue's samples, oldest first, the current one last.

    Dead-letter path known: it held messages in every sample of the last ``margin`` or more
    (a healthy dead-letter hand-over takes milliseconds; RabbitMQ's dead-letter worker retries
    an unconfirmed one after 3 minutes). Only totals known: the queue held messages, never fewer,
    in every sample for longer than its TTL plus ``margin``, so some are older than the TTL that
    should have moved them on."""
    at, latest = series[-1]
    if latest.dead_letter is not None:
        since = _held_since(series, lambda s: s.dead_letter is not None and s.dead_letter > 0)
        if since is not None and at - since >= margin:
            seconds = int((at - since).total_seconds())
            held = f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
            return Finding(latest.queue, "stranded", "critical",
                           f"{latest.dead_letter} message(s) of {latest.queue} have sat in its dead-letter path "
                           f"(neither ready nor unacked) in every sample for {held} or more: RabbitMQ "
                           "is not handing them on to the dead-letter exchange. They are not lost; "
                           "docs/runbook.md section 8 says how to move them on")  # fmt: skip
        return None
    if latest.total is None or ttl_ms is None or latest.total == 0:
        return None
    since = _held_since(series, lambda s: s.total is not None and s.total > 0)
    run = [s.total for t, s in series if since is not None and t >= since]
    never_fewer = all(b >= a for a, b in zip(run, run[1:], strict=False))
    if since is not None and never_fewer and at - since > timedelta(milliseconds=ttl_ms) + margin:
        return Finding(latest.queue, "stranded", "critical",
                       f"{latest.queue} has held messages, never fewer, for longer than its TTL "
                       f"({ttl_ms / 60000:g} min) plus {margin.total_seconds() / 60:g} min, {latest.total} now: "
                       "some are stuck past their TTL, likely in its dead-letter path, which this source "
                       "cannot see; docs/runbook.md section 8")  # fmt: skip
    return None


def _held_since(series: Sequence[tuple[datetime, QueueSample]], holds) -> datetime | None:
    """When the trailing run of samples for which ``holds`` is true began (None: not now)."""
    since = None
    for at, s in reversed(series):
        if not holds(s):
            break
        since = at
    return since


def _ttls_of_dead_lettering_queues(topo: Topology) -> dict[str, int | None]:
    """Queue name -> its message TTL (ms, None without one), for queues with a dead-letter path."""
    return {q.name: q.arguments.get("x-message-ttl") for q in topo.queues if "x-dead-letter-exchange" in q.arguments}


def _recorded(db, s: QueueSample, since: datetime, before: datetime) -> list[tuple[datetime, QueueSample]]:
    """The samples of ``s.queue`` recorded in [since, before), oldest first."""
    rows = db.execute(
        """SELECT sampled_at, ready, unacked, consumers, source, dead_letter, total FROM queue_samples
           WHERE queue = ? AND sampled_at >= ? AND sampled_at < ? ORDER BY sampled_at""",
        (s.queue, since.isoformat(), before.isoformat()),
    ).fetchall()
    return [(datetime.fromisoformat(r[0]), QueueSample(s.queue, s.role, r[1], r[2], r[3], r[4], r[5], r[6]))
            for r in rows]  # fmt: skip


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
    at = datetime.now(UTC)
    broker_incident(settings, None)
    record(settings, samples, at)
    findings = evaluate(settings, samples, at)
    return samples, findings, open_and_close_incidents(settings, findings, at)
