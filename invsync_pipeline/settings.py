"""Where invsync finds its configuration, its runtime files and the broker.

Configuration is one YAML file (``data/invsync.yaml`` by default, ``INVSYNC_CONFIG`` to point
elsewhere) validated by the models of ``settings_sections.py``. Secrets and per-machine facts come from the
environment, never from the file:

- ``INVSYNC_AMQP_URL``   broker URL, default ``amqp://127.0.0.1:5672/%2F`` (pika's guest login)
- ``INVSYNC_HOME``       runtime directory (staged events, outbox, DuckDB), default ``data/runtime``
- ``INVSYNC_NAMESPACE``  prefix for every exchange and queue name, so tests and plants can share
                         one broker without touching each other's topology
- ``INVSYNC_PLANT``      the plant this process serves where plants reconcile on their own
                         (docs/deploy.md); unset: one deployment for every plant
- ``INVSYNC_MES_URL``    MES base URL; ``INVSYNC_MES_TOKEN`` its bearer token
- ``INVSYNC_ERP_URL``    SQLAlchemy URL of the ERP database, default SQLite under INVSYNC_HOME
- ``INVSYNC_ALERT_WEBHOOK_URL``  where alerts are posted (Slack / Teams incoming webhook)
- ``INVSYNC_OPS_DB_URL`` SQLAlchemy URL of the operational store (review queue, decisions, their
                         audit trail), default SQLite ``ops.sqlite`` under INVSYNC_HOME
- ``INVSYNC_REVIEW_PASSWORD``  the review page's password (HTTP basic auth); environment only

A few settings of the file may also be given by the environment (``ENVIRONMENT`` below lists
them all). This module is the only reader of the file and of the environment: everything else
gets a ``Settings``, and nothing is read at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import ValidationError, ValidationInfo, field_validator

from invsync_pipeline.settings_sections import (
    CRITICAL_TRANSACTION_TYPES,
    DEFAULT_AMQP_URL,
    DEFAULT_CONFIG_PATH,
    FIRST_PARTITION,
    MATERIAL_TYPES,
    NON_CRITICAL_TRANSACTION_TYPES,
    PROJECT_ROOT,
    TRANSACTION_TYPES,
    ChecksSettings,
    ContractSettings,
    CutoverGate,
    CutoverSettings,
    DuckDBSettings,
    ErpSettings,
    MesSettings,
    MonitoringSettings,
    OutboxSettings,
    PilotStage,
    Plant,
    PlantQueue,
    ReconciliationSettings,
    ReviewSettings,
    StagingSettings,
    SyncSettings,
    TopologySettings,
    _Strict,
    clock_window,
)


class Settings(_Strict):
    topology: TopologySettings = TopologySettings()
    staging: StagingSettings = StagingSettings()
    contract: ContractSettings = ContractSettings()
    outbox: OutboxSettings = OutboxSettings()
    duckdb: DuckDBSettings = DuckDBSettings()
    mes: MesSettings = MesSettings()
    erp: ErpSettings = ErpSettings()
    sync: SyncSettings = SyncSettings()
    reconciliation: ReconciliationSettings = ReconciliationSettings()
    checks: ChecksSettings = ChecksSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    cutover: CutoverSettings = CutoverSettings()
    review: ReviewSettings = ReviewSettings()
    mes_token: str | None = None
    # Secrets: from the environment only (``_refuse_secrets``).
    review_password: str | None = None
    ops_db_url: str | None = None
    alert_webhook_url: str | None = None
    # One broker URL, or the nodes of a cluster comma-separated: clients connect to the first
    # that answers and fail over to the next (messaging/connection.py).
    amqp_url: str = DEFAULT_AMQP_URL
    home: Path = PROJECT_ROOT / "data" / "runtime"
    namespace: str = ""
    # The plant this process reconciles (INVSYNC_PLANT, a topology.plants warehouse), or None: one
    # deployment for every plant. A plant's own files live in plant_dir (docs/deploy.md).
    plant: str | None = None

    @field_validator("amqp_url")
    @classmethod
    def _broker_urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",")]
        for url in urls:
            if urlsplit(url).scheme not in ("amqp", "amqps") or not urlsplit(url).hostname:
                raise ValueError(f"{url!r} is not an AMQP URL (amqp://user@host:port/vhost); "
                                 "several nodes are separated by commas")  # fmt: skip
        if len({_vhost(u) for u in urls}) > 1:
            raise ValueError(f"the nodes {value!r} name different virtual hosts; a cluster's nodes share one")
        return ",".join(urls)

    @property
    def amqp_urls(self) -> list[str]:
        """The broker's nodes, in the order clients try them."""
        return self.amqp_url.split(",")

    @property
    def queue_type(self) -> str:
        """classic or quorum: ``topology.queue_type``, where auto means quorum on a cluster (a
        quorum queue is replicated to every node, so losing one loses no message)."""
        if self.topology.queue_type == "auto":
            return "quorum" if len(self.amqp_urls) > 1 else "classic"
        return self.topology.queue_type

    def name(self, local: str) -> str:
        """The broker-side name of an exchange or queue, with the namespace prefix."""
        return f"{self.namespace}{local}" if self.namespace else local

    @field_validator("plant")
    @classmethod
    def _known_plant(cls, value: str | None, info: ValidationInfo) -> str | None:
        topology = info.data.get("topology")
        if value is not None and topology is not None and value not in {p.warehouse for p in topology.plants}:
            known = ", ".join(p.warehouse for p in topology.plants) or "none"
            raise ValueError(f"not a plant of topology.plants (known: {known})")
        return value

    @property
    def plant_settings(self) -> Plant | None:
        """The topology entry of ``plant`` (None without a plant, or for an unknown one)."""
        return next((p for p in self.topology.plants if p.warehouse == self.plant), None)

    @property
    def plant_dir(self) -> Path:
        """Where this plant's own files live: its DuckDB file, staged log, reports and exports.
        ``home`` itself without a plant; ``home/plants/<plant>`` with one, so plants that share a
        home (and its ERP, ops store and analyst.duckdb) never share a DuckDB writer."""
        return self.home / "plants" / self.plant if self.plant else self.home

    @property
    def staged_dir(self) -> Path:
        return self.plant_dir / "staged"

    @property
    def warehouse_path(self) -> Path:
        return self.plant_dir / "warehouse.duckdb"

    @property
    def reports_dir(self) -> Path:
        return self.plant_dir / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.plant_dir / "exports"

    @property
    def analyst_db_path(self) -> Path:
        """analyst.duckdb: views over every plant's exports, in the shared home."""
        return self.home / "analyst.duckdb"

    @property
    def outbox_path(self) -> Path:
        return self.home / "outbox.sqlite"

    @property
    def mes_url(self) -> str:
        """The MES this process talks to: the plant's own (topology.plants[].mes_url) or mes.base_url."""
        own = self.plant_settings.mes_url if self.plant_settings else None
        return (own or self.mes.base_url).rstrip("/")

    @property
    def shadow_mes_url(self) -> str:
        return self.cutover.shadow_mes_url or f"{self.mes_url}/ns/shadow"

    @property
    def erp_url(self) -> str:
        return self.erp.url or f"sqlite:///{self.home / 'erp.sqlite'}"

    @property
    def ops_url(self) -> str:
        """The operational store (review queue, decisions, audit): a database made for several
        writers, so supervisors decide while a run holds DuckDB. Beside the alerts by default."""
        return self.ops_db_url or f"sqlite:///{self.home / 'ops.sqlite'}"


# Settings the environment may give, over the file: (variable, where in the settings).
ENVIRONMENT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("INVSYNC_AMQP_URL", ("amqp_url",)),
    ("INVSYNC_HOME", ("home",)),
    ("INVSYNC_NAMESPACE", ("namespace",)),
    ("INVSYNC_PLANT", ("plant",)),
    ("INVSYNC_MES_TOKEN", ("mes_token",)),
    ("INVSYNC_MES_URL", ("mes", "base_url")),
    ("INVSYNC_ERP_URL", ("erp", "url")),
    ("INVSYNC_DUCKDB_MEMORY_LIMIT", ("duckdb", "memory_limit")),
    ("INVSYNC_DUCKDB_THREADS", ("duckdb", "threads")),
    ("INVSYNC_ALERT_WEBHOOK_URL", ("alert_webhook_url",)),
    ("INVSYNC_OPS_DB_URL", ("ops_db_url",)),
    ("INVSYNC_REVIEW_PASSWORD", ("review_password",)),
    ("INVSYNC_REVIEW_BASE_URL", ("review", "base_url")),
    ("INVSYNC_RULES", ("reconciliation", "rules_path")),
    ("INVSYNC_FIRST_HOUR", ("reconciliation", "first_hour")),
    ("INVSYNC_ACCURACY_GOAL", ("checks", "accuracy_goal_pct")),
    ("INVSYNC_FRESHNESS_MINUTES", ("checks", "freshness_minutes")),
    ("INVSYNC_WORKING_HOURS", ("checks", "working_hours")),
    ("INVSYNC_PARKED_MAX_HOURS", ("checks", "parked_max_hours")),
)


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or breaks a rule; the message says which."""


def _refuse_secrets(raw: dict, path: Path) -> None:
    """Secrets come from the environment only (DESIGN.md, invariant 6): a config file is
    committed, copied and shared, so one holding a secret is refused, saying where it belongs."""
    if "mes_token" in raw:
        raise ConfigError(f"{path}: mes_token must not be in a config file; set INVSYNC_MES_TOKEN in the environment")
    if "alert_webhook_url" in raw:  # an incoming webhook's URL is its credential
        raise ConfigError(
            f"{path}: alert_webhook_url must not be in a config file; set INVSYNC_ALERT_WEBHOOK_URL in the environment"
        )
    if "review_password" in raw:
        raise ConfigError(
            f"{path}: review_password must not be in a config file; set INVSYNC_REVIEW_PASSWORD in the environment"
        )
    erp = raw.get("erp")
    for where, url, variable in (
        ("ops_db_url", raw.get("ops_db_url"), "INVSYNC_OPS_DB_URL"),
        ("amqp_url", raw.get("amqp_url"), "INVSYNC_AMQP_URL"),
        ("erp.url", erp.get("url") if isinstance(erp, dict) else None, "INVSYNC_ERP_URL"),
    ):
        if isinstance(url, str) and _has_password(url):
            raise ConfigError(
                f"{path}: {where} holds a password; leave it out of the file and set {variable} in the environment"
            )


def _has_password(url: str) -> bool:
    try:
        return any(urlsplit(part.strip()).password is not None for part in url.split(","))
    except ValueError:  # not a URL Settings would accept anyway: the model says what is wrong
        return False


def _vhost(url: str) -> str:
    return unquote(urlsplit(url).path[1:]) if urlsplit(url).path not in ("", "/") else "/"


def dagster_home() -> Path | None:
    """DAGSTER_HOME, where the Dagster instance keeps runs (None: an ephemeral instance)."""
    value = os.environ.get("DAGSTER_HOME")
    return Path(value) if value else None


def config_file(config_path: str | Path | None = None) -> Path:
    """The config file ``load_settings`` reads: ``config_path``, else INVSYNC_CONFIG, else data/invsync.yaml."""
    return Path(config_path or os.environ.get("INVSYNC_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(config_path: str | Path | None = None, **overrides: object) -> Settings:
    """Read the YAML file, then apply the environment, then explicit overrides."""
    path = config_file(config_path)
    raw: dict = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    elif config_path or os.environ.get("INVSYNC_CONFIG"):
        raise ConfigError(f"config file {path} does not exist (set INVSYNC_CONFIG to the right path)")
    _refuse_secrets(raw, path)
    given: dict[tuple[str, ...], str] = {}
    for variable, where in ENVIRONMENT:
        value = os.environ.get(variable)
        if value is None or (value == "" and variable != "INVSYNC_NAMESPACE"):
            continue  # an empty namespace is a choice (no prefix); other empty variables are unset
        section = raw
        for key in where[:-1]:
            section = section.setdefault(key, {})
        section[where[-1]] = value
        given[where] = variable
    raw.update(overrides)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}"
            + (f" (from {given[tuple(err['loc'])]})" if tuple(err["loc"]) in given else "")
            + f": {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


__all__ = [
    "CRITICAL_TRANSACTION_TYPES", "DEFAULT_AMQP_URL", "DEFAULT_CONFIG_PATH", "ENVIRONMENT", "FIRST_PARTITION",
    "MATERIAL_TYPES", "NON_CRITICAL_TRANSACTION_TYPES", "PROJECT_ROOT", "TRANSACTION_TYPES", "ChecksSettings",
    "ConfigError", "ContractSettings", "CutoverGate", "CutoverSettings", "DuckDBSettings", "ErpSettings",
    "MesSettings", "MonitoringSettings", "OutboxSettings", "PilotStage", "Plant", "PlantQueue",
    "ReconciliationSettings", "ReviewSettings", "Settings", "StagingSettings", "SyncSettings", "TopologySettings",
    "clock_window", "config_file", "dagster_home", "load_settings",
]  # fmt: skip
