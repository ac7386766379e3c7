"""Dagster resources: the invsync settings and the DuckDB warehouse, chosen per environment."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from invsync_pipeline.settings import Settings, load_settings
from invsync_pipeline.warehouse import open_warehouse


class InvsyncResource(dg.ConfigurableResource):
    """The invsync configuration (data/invsync.yaml plus INVSYNC_* environment variables)."""

    config_path: str | None = None

    def settings(self) -> Settings:
        return load_settings(self.config_path)


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file the assets write; defaults to warehouse.duckdb under INVSYNC_HOME."""

    path: str | None = None

    def resolved_path(self) -> str:
        return self.path or str(load_settings().warehouse_path)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with open_warehouse(self.resolved_path(), read_only=read_only) as conn:
            yield conn
