"""The plant simulator end to end (`invsync simulate`): plan a seeded run, carry it out, record the ground truth.

The pieces, each usable on its own:

- ``generate(seed, start, hours, plant_size, fault_profile) -> Simulation`` (``sim_plan``): pure
- ``run(sim, settings, mes_client, erp=, worker=) -> RunResult`` (``sim_run``): against real systems
- ``ground_truth(settings) -> DataFrame`` and ``compare_stock(erp, mes_client, as_of, faults)``
  (``ground_truth``): what was injected, and where ERP and MES stock differ
- ``MesPublisher`` (``mes_publisher``): the reference MES's publisher through its own outbox

``simulate`` wires them up the way the command does: topology, an embedded MES (or a running
one), a sync worker on a thread until the plant queues are drained, and the stock comparison.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from invsync_pipeline.contract import instant_text
from invsync_pipeline.messaging.topology import apply_topology
from invsync_pipeline.reference.faults import FAULT_KINDS, FAULT_TYPES, FaultProfile, FaultProfileError
from invsync_pipeline.reference.ground_truth import compare_stock, ground_truth, planned_events
from invsync_pipeline.reference.mes_client import ReferenceMesClient
from invsync_pipeline.reference.mes_publisher import MesPublisher
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.reference.plant import PLANT_SIZES, WAREHOUSES, build_plant
from invsync_pipeline.reference.sim_model import Simulation
from invsync_pipeline.reference.sim_plan import generate
from invsync_pipeline.reference.sim_run import BackgroundWorker, RunResult, SimulationError, run
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.erp import ErpDatabase

__all__ = [
    "FAULT_KINDS", "FAULT_TYPES", "PLANT_SIZES", "BackgroundWorker", "FaultProfile", "FaultProfileError",
    "MesPublisher", "RunResult", "SimulateReport", "Simulation", "SimulationError", "build_plant", "compare_stock",
    "default_start", "generate", "ground_truth", "planned_events", "run", "simulate",
]  # fmt: skip


def default_start(hours: int, now: datetime | None = None) -> datetime:
    """The first hour of a run that ends with the last full hour: now floored to the hour, minus ``hours``."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


@dataclass
class SimulateReport:
    sim: Simulation
    result: RunResult
    mes_url: str
    comparison: pd.DataFrame | None = None  # compare_stock at the end of the simulated hours

    @property
    def unexpected(self) -> pd.DataFrame:
        """Material-locations no fault touched where ERP and MES differ (empty when all is well)."""
        if self.comparison is None:
            return pd.DataFrame()
        c = self.comparison
        return c[~c["fault_touched"] & (c["difference"] != 0)]

    def summary(self) -> dict:
        r = self.result
        out = {
            "run_id": r.run_id, "seed": self.sim.seed, "start": instant_text(self.sim.start),
            "hours": self.sim.hours, "plant_size": self.sim.plant.size, "profile": self.sim.profile.name,
            "events": r.events, "erp_postings": r.erp_postings, "backflushes": r.backflushes,
            "published": r.published, "unpublished_backflushes": len(r.unpublished_backflushes),
            "faults": self.sim.faults_by_type(), "seconds": round(r.seconds, 2),
            "ground_truth": str(r.truth_path), "mes_url": self.mes_url,
        }  # fmt: skip
        if self.comparison is not None:
            c = self.comparison
            out["verify"] = {
                "keys": len(c), "differing": int((c["difference"] != 0).sum()),
                "unexpected": len(self.unexpected), "faulted_as_expected": int(c["matches_ground_truth"].sum()),
            }  # fmt: skip
        return out


def simulate(
    settings: Settings,
    *,
    seed: int,
    hours: int,
    start: datetime | None = None,
    plant_size: str = "small",
    faults: FaultProfile | str | Path = "default",
    mes_url: str | None = None,
    with_worker: bool = True,
    verify: bool = False,
    drain_timeout: float = 300.0,
) -> SimulateReport:
    """Plan and run a simulation. ``mes_url`` None starts the reference MES in a thread (data in
    ``<home>/mes.sqlite``, publishing through ``<home>/mes-outbox.sqlite``); otherwise that MES is used."""
    start = start or default_start(hours)
    warehouses = tuple(plant.warehouse for plant in settings.topology.plants) or WAREHOUSES
    sim = generate(seed, start, hours, plant_size, faults if isinstance(faults, FaultProfile) else str(faults),
                   warehouses)  # fmt: skip
    apply_topology(settings)
    with contextlib.ExitStack() as stack:
        token = settings.mes_token or secrets.token_urlsafe(24)
        if mes_url is None:
            mes = run_in_thread(settings.home / "mes.sqlite", token, publish=MesPublisher(settings))
            stack.callback(mes.stop)
            mes_url = mes.url
        elif not settings.mes_token:
            raise SimulationError(f"--mes-url {mes_url}: set INVSYNC_MES_TOKEN to that MES's bearer token")
        cfg = settings.mes
        client = ReferenceMesClient(mes_url, token, cfg.timeout_seconds, cfg.read_retries, cfg.page_size)
        stack.callback(client.close)
        erp = ErpDatabase.from_settings(settings)
        stack.callback(erp.dispose)
        # Entered last, so it stops first: before the MES it talks to goes away.
        worker = stack.enter_context(BackgroundWorker(settings, client)) if with_worker else None
        result = run(sim, settings, client, erp=erp, worker=worker, drain_timeout=drain_timeout)
        report = SimulateReport(sim, result, mes_url)
        if verify:
            report.comparison = compare_stock(erp, client, sim.end, ground_truth(settings))
    return report
