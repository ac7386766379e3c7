"""The sections of invsync's config file, as validated models; settings.py reads the file into them."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The first hourly partition Dagster knows. A plant's own first hour is reconciliation.first_hour.
FIRST_PARTITION = "2025-01-01-00:00"
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "data" / "invsync.yaml"
DEFAULT_AMQP_URL = "amqp://127.0.0.1:5672/%2F"

MATERIAL_TYPES = ("raw", "wip", "finished", "packaging", "mro")
TRANSACTION_TYPES = ("receipt", "issue", "transfer", "adjustment", "cycle_count")
CRITICAL_TRANSACTION_TYPES = ("receipt", "issue", "transfer")
NON_CRITICAL_TRANSACTION_TYPES = ("adjustment", "cycle_count")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlantQueue(_Strict):
    """One work queue of a plant: which material types and transaction types it carries."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_-]+$")
    material_types: tuple[str, ...] = Field(default=("*",))
    transaction_types: tuple[str, ...] = Field(default=CRITICAL_TRANSACTION_TYPES)

    @field_validator("material_types")
    @classmethod
    def _known_material_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item != "*" and item not in MATERIAL_TYPES:
                raise ValueError(f"unknown material type {item!r}; use one of {MATERIAL_TYPES} or '*'")
        return value

    @field_validator("transaction_types")
    @classmethod
    def _known_transaction_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item not in TRANSACTION_TYPES:
                raise ValueError(f"unknown transaction type {item!r}; use one of {TRANSACTION_TYPES}")
        return value


class Plant(_Strict):
    """A plant is a warehouse code (the part of ``location`` before "/") and its work queues."""

    warehouse: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    queues: tuple[PlantQueue, ...]
    # The plant's own MES, where each plant runs one (None: mes.base_url). No token here: a
    # plant's process gets INVSYNC_MES_TOKEN from its own environment.
    mes_url: str | None = Field(default=None, pattern=r"^https?://[^\s@]+$")


class TopologySettings(_Strict):
    exchange: str = "inventory"
    # auto: quorum queues when amqp_url names several nodes (a cluster), else classic.
    queue_type: Literal["auto", "classic", "quorum"] = "auto"
    message_ttl_ms: int = Field(default=24 * 3600 * 1000, gt=0)
    retry_delays_ms: tuple[int, ...] = (60_000, 300_000, 900_000)
    ledger_tap_queue: str = "ledger.tap"
    # One ledger tap per plant (<ledger_tap_queue>.<plant>, bound to inventory.<plant>.#) instead
    # of one for all: each plant's Dagster code location drains its own (docs/deploy.md).
    tap_per_plant: bool = False
    plants: tuple[Plant, ...] = ()


class StagingSettings(_Strict):
    batch_max_events: int = Field(default=5000, gt=0)
    batch_max_seconds: float = Field(default=2.0, gt=0)
    tick_max_seconds: float = Field(default=30.0, gt=0, lt=55)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)


class ContractSettings(_Strict):
    """What the message contract accepts beyond its table (contract.py, ContractLimits).

    The time horizon, relative to now (UTC) when a message is read: an event older or further
    in the future than this is refused with its reason (a sender's clock gone wrong), so its hour
    never waits in the sensor's cursor forever."""

    max_age_days: int = Field(default=400, ge=1, le=36_500)
    max_future_minutes: int = Field(default=60, ge=0, le=366 * 24 * 60)


class DuckDBSettings(_Strict):
    # DuckDB's own default is 80% of the machine's RAM. On a machine shared with the Dagster
    # webserver and daemon, cap it (e.g. "4GB"); larger work spills to disk next to the file.
    memory_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B)$")
    # How long a run (or the CLI) waits while another process holds the file's lock before it
    # fails saying which process that is.
    lock_wait_seconds: float = Field(default=120.0, ge=0, le=3600)
    # Threads of a run's DuckDB (None: DuckDB's default, every core). Where several plants'
    # runs share a machine (plants on their own, docs/deploy.md), give each its share of cores.
    threads: int | None = Field(default=None, ge=1, le=1024)


class ReviewSettings(_Strict):
    # Where supervisors reach `invsync review serve`: the alert webhook's message links to
    # <base_url>/items/<correction_id>, so it must be the address people open, not 0.0.0.0.
    base_url: str = "http://127.0.0.1:8790"
    # The hours of a key shown as evidence on an item's page, the held hour included.
    recent_hours: int = Field(default=6, ge=1, le=168)


class OutboxSettings(_Strict):
    # 2 h of peak traffic at 100 events/s, the sizing rule in the foundation issue.
    capacity_events: int = Field(default=720_000, gt=0)
    confirm_window: int = Field(default=1000, gt=0)


class MesSettings(_Strict):
    """The MES REST API. The bearer token comes from INVSYNC_MES_TOKEN, never from this file."""

    base_url: str = "http://127.0.0.1:8765"
    timeout_seconds: float = Field(default=5.0, gt=0)
    read_retries: int = Field(default=3, ge=0)
    page_size: int = Field(default=1000, gt=0, le=10000)


class ErpSettings(_Strict):
    """The ERP database (SQLAlchemy URL from INVSYNC_ERP_URL; default a SQLite file in home).

    ``tables`` maps the logical SAP-shaped tables and columns to the names in the database, so
    a replica of a real SAP system can be read without code changes."""

    url: str | None = None
    tables: dict[str, dict[str, str]] = Field(default_factory=dict)


class SyncSettings(_Strict):
    """The real-time MES sync worker."""

    # Messages in flight per queue: a few batches' worth, so one batch is being answered while
    # the next fills (200 held the worker to one batch in flight and ~1,800 events/s).
    prefetch: int = Field(default=1000, gt=0)
    mes_concurrency: int = Field(default=8, gt=0, le=64)
    # Adjustments and cycle counts wait for a low-activity window (UTC, "HH:MM-HH:MM");
    # an empty list applies them at once.
    noncritical_windows: tuple[str, ...] = ()
    noncritical_batch_size: int = Field(default=500, gt=0)
    # Micro-batching: events bound for one MES go to it in one call, up to this many, or what
    # arrived within the window after the first (a movement never waits longer than the window).
    batch_max_events: int = Field(default=200, ge=1, le=5000)
    batch_window_ms: float = Field(default=5.0, ge=0, le=1000)

    @field_validator("noncritical_windows")
    @classmethod
    def _windows(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for window in value:
            clock_window(window)
        return value

    # AMQP heartbeat; MES calls run off the connection's thread, so even calls longer than
    # this never make the broker drop the worker.
    heartbeat_seconds: int = Field(default=30, ge=1, le=600)


class ReconciliationSettings(_Strict):
    """The hourly reconciliation (docs/analysts.md explains the causes)."""

    # A movement younger than this when its hour is first investigated may still be on its way
    # (the ERP outbox buffers up to 2 h of a broker outage; a retry tier or a slow upstream holds
    # others): it is `in_flight`, never corrected, and looked at again in the next hours. Only
    # once the window has passed can it become `not_published` or `missing_in_*` and be corrected.
    in_flight_window_minutes: int = Field(default=120, ge=0, le=7 * 24 * 60)
    # The first hour reconciled (UTC, "YYYY-MM-DD-HH:00"): a plant onboarded at a cut-off starts
    # there (`invsync onboard`); earlier hours are neither staged into DuckDB nor scheduled.
    first_hour: str = FIRST_PARTITION
    # The source-of-truth rules file.
    rules_path: Path = PROJECT_ROOT / "data" / "rules.yaml"

    @field_validator("first_hour")
    @classmethod
    def _hour_key(cls, value: str) -> str:
        try:
            parsed = datetime.strptime(value, "%Y-%m-%d-%H:%M")
        except ValueError:
            raise ValueError("must be an hour as YYYY-MM-DD-HH:00 (UTC), e.g. 2026-12-01-06:00") from None
        if parsed.minute or parsed < datetime.strptime(FIRST_PARTITION, "%Y-%m-%d-%H:%M"):
            raise ValueError(f"must be a whole hour (minute 00), not before {FIRST_PARTITION}")
        return value


class ChecksSettings(_Strict):
    """Thresholds of the asset checks (checks/)."""

    accuracy_goal_pct: float = Field(default=99.5, gt=0, le=100)  # inventory_accuracy warns below it
    freshness_minutes: float = Field(default=90, gt=0)  # staged_events_fresh: newest event older than this
    working_hours: str = "06:00-22:00"  # UTC; outside them a quiet plant is normal
    parked_max_hours: float = Field(default=4.0, gt=0)  # parking_not_stale: parked longer than this

    @field_validator("working_hours")
    @classmethod
    def _working_hours(cls, value: str) -> str:
        clock_window(value)
        return value


class MonitoringSettings(_Strict):
    """Queue-health thresholds (invsync_pipeline/ops/queue_health.py)."""

    management_port: int = 15672  # the management HTTP API, used where it is enabled
    # Else `rabbitmqctl list_queues`, which also counts a quorum queue's dead-letter path, on this
    # node (None: rabbitmqctl's default node, and only for a broker on this machine's port 5672).
    rabbitmqctl: bool = True
    rabbitmqctl_node: str | None = None
    rabbitmqctl_timeout_seconds: float = Field(default=10.0, gt=0, le=50)
    # Ready messages a queue of each role may hold before it is an incident (parking: none).
    max_ready: dict[Literal["work", "tap", "retry", "parking"], int] = {
        "work": 10_000, "tap": 100_000, "retry": 5_000, "parking": 0,
    }  # fmt: skip
    growth_samples: int = Field(default=5, ge=2)  # grew in each of this many samples in a row
    min_growth_depth: int = Field(default=100, ge=1)  # ... and holds at least this many
    # Messages in a queue's dead-letter path in every sample for this long are stranded (longer
    # than RabbitMQ's own 180 s retry of an unconfirmed dead letter).
    stranded_after_seconds: int = Field(default=300, ge=0)


class PilotStage(_Strict):
    """From ``since`` (a UTC date) on, the event-driven path carries these material types."""

    since: date
    material_types: tuple[str, ...] = Field(min_length=1)

    @field_validator("material_types")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item not in MATERIAL_TYPES:
                raise ValueError(f"unknown material type {item!r}; use some of {MATERIAL_TYPES}")
        return value


class CutoverGate(_Strict):
    min_accuracy: float = Field(default=0.995, gt=0, le=1)
    consecutive_days: int = Field(default=7, ge=1)


class CutoverSettings(_Strict):
    """The cutover from the old batch sync (invsync_pipeline/cutover/, docs/cutover.md).

    ``initial_mode`` holds until the first ``invsync cutover go-live|rollback``; after that the
    switch log in ``<home>/cutover.sqlite`` says which mode is in force. ``live`` with no pilot
    stages is a plant without a batch sync: every material type goes the event-driven way."""

    initial_mode: Literal["shadow", "live"] = "live"
    # The MES namespace (or a second instance) the event-driven path writes to in shadow mode;
    # None: the reference MES's shadow namespace under mes.base_url.
    shadow_mes_url: str | None = None
    batch_sync_every_hours: int = Field(default=2, ge=1, le=24)
    tolerance: float = Field(default=0.001, ge=0)  # base units; |a - b| <= tolerance agrees
    gate: CutoverGate = CutoverGate()
    # Widened step by step; empty: every material type from the start.
    pilot: tuple[PilotStage, ...] = ()

    @field_validator("pilot")
    @classmethod
    def _ordered(cls, value: tuple[PilotStage, ...]) -> tuple[PilotStage, ...]:
        if list(value) != sorted(value, key=lambda stage: stage.since):
            raise ValueError("pilot stages must be in date order (since: ...)")
        return value


def clock_window(window: str) -> tuple[int, int]:
    """("HH:MM-HH:MM" in UTC) -> (start, end) in minutes of the day; end may be 24:00, and a
    start after the end wraps midnight (22:00-06:00). Raises ValueError saying what to write."""
    start, sep, end = window.partition("-")
    minutes = []
    for part in (start, end) if sep else ():
        try:
            hours, mins = (int(x) for x in part.strip().split(":"))
        except ValueError:
            break
        if not (0 <= hours <= 24 and 0 <= mins < 60) or (hours == 24 and mins):
            break
        minutes.append(hours * 60 + mins)
    if len(minutes) != 2:
        raise ValueError(f"{window!r} is not HH:MM-HH:MM in UTC; write e.g. '06:00-22:00'")
    return minutes[0], minutes[1]
