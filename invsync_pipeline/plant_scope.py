"""What a plant's own code location fixes when its code loads: its asset keys and its DuckDB pool.

Where plants reconcile on their own (docs/deploy.md), each plant is a Dagster code location of
its own: the same code, loaded with ``INVSYNC_PLANT`` set in its environment. Dagster needs an
asset's key and its op's pool when the code loads, so these two, and nothing else, are read then
(as the partitions' first hour is a constant): the plant's assets are ``<plant>/<asset>`` (one
instance can hold every plant's), and its runs share the pool ``duckdb_writer.<plant>`` (one
writer per plant's DuckDB file, so plants never wait for each other). Without a plant, keys and
pool are the plain ones. Everything else a run reads from ``Settings`` (``plant_dir``).
"""

from __future__ import annotations

import os
import re

import dagster as dg

# The pool every run that writes the (plant's) DuckDB file joins; its limit must be 1
# (scripts/dagster-home sets it for every plant of the topology).
BASE_POOL = "duckdb_writer"


def plant_at_load() -> str | None:
    """INVSYNC_PLANT as the code loads, checked for the characters an asset key and a file name
    take; whether the topology has it is checked with the rest of the settings."""
    value = os.environ.get("INVSYNC_PLANT") or None
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(f"INVSYNC_PLANT={value!r}: a plant is a warehouse code of topology.plants (letters, "
                         "digits, '_' or '-')")  # fmt: skip
    return value


def writer_pool(plant: str | None) -> str:
    """The DuckDB writers' pool of a plant (of the one deployment when None)."""
    return f"{BASE_POOL}.{plant.lower()}" if plant else BASE_POOL


PLANT = plant_at_load()
DUCKDB_WRITER_POOL = writer_pool(PLANT)
ASSET_KEY_PREFIX: list[str] | None = [PLANT.lower()] if PLANT else None


def asset_key(name: str) -> dg.AssetKey:
    """The key of this code location's asset ``name`` (``<plant>/<name>`` in a plant's location)."""
    return dg.AssetKey([*(ASSET_KEY_PREFIX or []), name])


if __name__ == "__main__":  # the plants' pools, one per line, for scripts/dagster-home
    from invsync_pipeline.settings import load_settings

    loaded = load_settings()
    if loaded.topology.tap_per_plant:
        print("\n".join(writer_pool(p.warehouse) for p in loaded.topology.plants))
