"""Dagster resources: the invsync settings and the DuckDB warehouse, chosen per environment."""

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from invsync_pipeline.settings import Settings, load_settings
from invsync_pipeline.warehouse import connect_warehouse, open_warehouse


class InvsyncResource(dg.ConfigurableResource):
    """The invsync configuration (data/invsync.yaml plus INVSYNC_* environment variables)."""

    config_path: str | None = None

    def settings(self) -> Settings:
        return load_settings(self.config_path)


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
            self._run_conn = connect_warehouse(self.resolved_path(), memory_limit=load_settings().duckdb.memory_limit)
        try:
            yield self._run_conn
        except BaseException:
            # A step that failed inside a transaction must not leave it open for the next step.
            with suppress(duckdb.Error):
                self._run_conn.execute("ROLLBACK")
            raise
