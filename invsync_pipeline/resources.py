"""Dagster resources: the settings, the DuckDB warehouse, and the plant's ERP and MES.

The ERP and the MES are resources so that a plant (or a test) hands in its own: the assets, the
corrections and the cutover reach them only through ``ErpResource.open`` and
``MesResource.open`` / ``event_path``, which give the small interfaces of ``sources/``
(``ErpApi``, ``MesApi``). docs/integrating.md says how to plug in a real SAP and MES.
"""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from invsync_pipeline.settings import Settings, load_settings
from invsync_pipeline.sources.erp import ErpApi, ErpDatabase
from invsync_pipeline.sources.mes import MesApi, MesClient
from invsync_pipeline.sources.systems import Systems
from invsync_pipeline.warehouse import connect_warehouse, open_warehouse


class InvsyncResource(dg.ConfigurableResource):
    """The invsync configuration (data/invsync.yaml plus INVSYNC_* environment variables)."""

    config_path: str | None = None
    home: str | None = None  # over INVSYNC_HOME and the file (the demos' own runtime dirs)

    def settings(self) -> Settings:
        return load_settings(self.config_path, **({"home": self.home} if self.home else {}))


class ErpResource(dg.ConfigurableResource):
    """The plant's ERP. This implementation reads and writes SAP-shaped tables through SQLAlchemy
    (``sources/erp.py``): at ``url`` (None: the settings' erp.url, INVSYNC_ERP_URL, or SQLite under
    INVSYNC_HOME), with the table and column names of ``erp.tables``. For another ERP, subclass
    it and override ``open`` to return your ``ErpApi``."""

    config_path: str | None = None
    url: str | None = None

    def open(self) -> ErpApi:
        """A connection to the ERP; ``dispose()`` it (or use ``with``)."""
        settings = load_settings(self.config_path)
        return ErpDatabase(self.url or settings.erp_url, settings.erp.tables)


class MesResource(dg.ConfigurableResource):
    """The plant's MES. This implementation speaks the REST API of the reference MES
    (``sources/mes.py``): at ``base_url`` (None: the plant's mes_url, else mes.base_url, INVSYNC_MES_URL) with
    the bearer ``token`` (None: INVSYNC_MES_TOKEN). During a cutover the event-driven path writes
    a shadow MES at ``shadow_url`` (None: cutover.shadow_mes_url, or the reference's /ns/shadow).
    For another MES, subclass it and override ``open`` to return your ``MesApi``."""

    config_path: str | None = None
    base_url: str | None = None
    shadow_url: str | None = None
    token: str | None = None

    def open(self, mode: str = "live") -> MesApi:
        """A client of the live MES, or of the shadow one (``mode`` "shadow"); ``close()`` it."""
        settings = load_settings(self.config_path)
        if mode == "shadow":
            url = self.shadow_url or settings.cutover.shadow_mes_url or f"{self.live_url(settings)}/ns/shadow"
        else:
            url = self.live_url(settings)
        mes = settings.mes
        return MesClient(url, self.token or settings.mes_token, timeout_seconds=mes.timeout_seconds,
                         read_retries=mes.read_retries, page_size=mes.page_size)  # fmt: skip

    def live_url(self, settings: Settings) -> str:
        return (self.base_url or settings.mes_url).rstrip("/")

    def event_path(self, at: datetime | None = None) -> MesApi:
        """The MES the event-driven path wrote at ``at`` (None: writes now): the live one, or
        the shadow one while a cutover runs in shadow mode (cutover/routing.py decides)."""
        from invsync_pipeline.cutover.routing import mode_at

        return self.open(mode_at(load_settings(self.config_path), at))


def open_systems(erp: ErpResource, mes: MesResource, at: datetime | None = None) -> Systems:
    """The ERP and the MES the event-driven path wrote at ``at`` (None: now), for one piece of work."""
    return Systems(erp.open(), mes.event_path(at))


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file the assets write; defaults to warehouse.duckdb under INVSYNC_HOME."""

    path: str | None = None
    # Inside a run, one connection serves every step: a backfill of hundreds of hours in one
    # run would otherwise open the file, and check its schema, thousands of times.
    _in_run: bool = PrivateAttr(default=False)
    _run_conn: duckdb.DuckDBPyConnection | None = PrivateAttr(default=None)

    def resolved_path(self) -> str:
        return self.path or str(load_settings().warehouse_path)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._run_conn is not None:
            self._run_conn.close()
            self._run_conn = None
        self._in_run = False

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse; in a run, the run's one read-write connection (a run
        that writes holds DuckDB's single writer lock anyway, so reading through it costs nothing)."""
        if not self._in_run:
            with open_warehouse(self.resolved_path(), read_only=read_only) as conn:
                yield conn
            return
        if self._run_conn is None:
            # A run waits for a reader that holds the file (an analyst's session) before failing.
            cfg = load_settings().duckdb
            self._run_conn = connect_warehouse(self.resolved_path(), memory_limit=cfg.memory_limit, threads=cfg.threads,
                                               lock_wait_seconds=cfg.lock_wait_seconds)  # fmt: skip
        try:
            yield self._run_conn
        except BaseException:
            # A step that failed inside a transaction must not leave it open for the next step.
            with suppress(duckdb.Error):
                self._run_conn.execute("ROLLBACK")
            raise
