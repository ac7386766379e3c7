"""Go-live and rollback: switch the event-driven path between the shadow and the live MES in one step.

A switch happens at a clean point of the stream: every sync worker finishes what it has in
flight and pauses (state.py), the MES the path is leaving is copied into the one it is going to
for the material types in pilot scope (cycle counts with ids derived from the switch, so a
retried switch writes nothing twice), and only then do workers resume against the new target.
Each event is therefore applied on exactly one side of the switch: before it in the old target
(and carried over by the copy), after it in the new one. A message whose ack was lost at the
switch is looked up in the old target before it is applied to the new one (worker.py).

One kind of event is not the path's to apply: a backflush (or any movement) booked in the live
MES itself. In shadow mode the path applies it to the shadow; the live MES has it already. If
go-live's copy counts a key before the shadow got such a booking (it waited in the queue, or
was booked after the workers paused), the count overwrote it in the live MES. The worker, on
meeting that event after go-live, puts back what the count overwrote (``restore_overwritten``).

Rollback is the same switch back to shadow, followed at once by a batch sync run, so the live
MES is the ERP's copy again, as it was before go-live.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from invsync_pipeline.contract import InventoryEvent, instant_text, parse_event
from invsync_pipeline.cutover.batch_sync import run_batch_sync
from invsync_pipeline.cutover.scope import scope_on
from invsync_pipeline.cutover.state import CutoverState, Switch, SwitchRefused
from invsync_pipeline.resources import ErpResource, MesResource
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.balances import balance_id, erp_stock, key_hash, mes_balances, set_balances
from invsync_pipeline.sources.mes import MesApi, MesClient, PostResult

log = logging.getLogger("invsync.cutover")


@dataclass(frozen=True)
class SwitchResult:
    switch: Switch
    workers_paused: int
    seeded: dict[str, object]
    batch_sync: dict[str, object] | None = None


def mes_client_for(settings: Settings, mode: str) -> MesClient:
    """A REST client of the MES the event-driven path writes in ``mode`` (the shadow namespace,
    or the live MES), for the reference systems and tests; the pipeline opens ``MesResource``."""
    return MesClient.from_settings(settings, base_url=settings.shadow_mes_url if mode == "shadow" else None)


def switch_to(
    settings: Settings,
    to_mode: str,
    *,
    note: str | None = None,
    pause_timeout: float = 60.0,
    erp: ErpResource | None = None,
    mes: MesResource | None = None,
) -> SwitchResult:
    """Switch the event-driven path to ``to_mode`` ("live" = go-live, "shadow" = rollback)."""
    by = getpass.getuser()
    erp, mes = erp or ErpResource(), mes or MesResource()
    with CutoverState(settings) as state:
        switch = state.begin(to_mode, by, note)
        try:
            paused = state.wait_until_paused(switch.seq, pause_timeout)
            at = datetime.now(UTC)
            source, dest, books = mes.open(switch.from_mode), mes.open(to_mode), erp.open()
            try:
                _, material_types = erp_stock(books, at)
                wanted, current = mes_balances(source), mes_balances(dest)
                seeded = set_balances(dest, wanted, material_types, scope_on(settings, at.date()), at,
                                      f"CUTOVER{switch.seq}", f"CUTOVER-{switch.seq}", current=current)  # fmt: skip
            finally:
                books.dispose()
                source.close()
                dest.close()
            if seeded.failed:
                raise SwitchRefused(
                    f"{len(seeded.failed)} stock copies to the {to_mode} MES failed (first: {seeded.failed[0]}); "
                    "the switch was aborted and workers go on as before. Fix the MES and run the command again: "
                    "what was copied is not copied twice"
                )
        except BaseException as exc:
            state.abort(switch.seq, str(exc)[:500])
            raise
        done = state.complete(switch.seq, seeded.posted, copied_at=at)
    log.info("switch %d: event-driven path %s -> %s; %d keys copied", done.seq, done.from_mode, to_mode, seeded.posted)
    batch = None
    if to_mode == "shadow":
        live, books = mes.open("live"), erp.open()
        try:
            batch = run_batch_sync(settings, live, books)
        finally:
            live.close()
            books.dispose()
    return SwitchResult(done, paused, seeded.as_dict(), batch)


def seed_from_erp(
    settings: Settings,
    mode: str,
    material_types: tuple[str, ...],
    at: datetime | None = None,
    *,
    erp: ErpResource | None = None,
    mes: MesResource | None = None,
) -> dict[str, object]:
    """Set the ``mode`` MES's stock of these types to the ERP's as of ``at`` (default now).

    For the shadow MES after a problem found in shadow mode was fixed, or when the pilot scope
    widens to a type the shadow never carried: without it, the old difference stays in every
    comparison after. Ids derive from ``at`` and the key: running it again writes nothing twice."""
    at = at or datetime.now(UTC)
    books = (erp or ErpResource()).open()
    try:
        wanted, types = erp_stock(books, at)
    finally:
        books.dispose()
    dest = (mes or MesResource()).open(mode)
    try:
        result = set_balances(dest, wanted, types, material_types, at, "SEED", "SEED-FROM-ERP")
    finally:
        dest.close()
    with CutoverState(settings) as state:  # a booking older than a seed is in it (restore_overwritten)
        state.record_seed(mode, at, tuple(material_types), getpass.getuser())
    return {"mode": mode, "at": at.isoformat(), "material_types": list(material_types)} | result.as_dict()


def restore_overwritten(
    switch: Switch, event: InventoryEvent, live: MesApi, shadow: MesApi, since: datetime | None
) -> PostResult:
    """Put back, in the live MES, a booking of its own that go-live's copy overwrote.

    ``event`` was booked in the live MES before ``switch`` (a go-live) completed, and after
    ``since``, the last time the shadow got a wholesale copy (a rollback's copy or a seed: a
    booking older than that reached the shadow with it). If the shadow applied it, the copy
    carried it over: nothing to do. Otherwise, for each stock key it moved, if the switch's
    cycle count for that key came after it in the live MES's log (applied_at, then
    mes_transaction_id), the count replaced its effect, and a correction of the MES restores it.
    The correction is written straight to the MES, as the copy's counts are, with an id from
    the switch, the event and the key (``CUTOVER<n>-KEEP-…``), so a redelivered event restores
    nothing twice. Status "restored" when the MES applied a correction, else "skipped"."""
    tx = event.transaction_id
    booked = live.find_transaction(tx)
    if (
        booked is None
        or switch.copied_at is None
        or (since is not None and event.timestamp < since)
        or shadow.find_transaction(tx) is not None
    ):
        return PostResult(booked["mes_transaction_id"] if booked else "", "skipped", tx)

    def order(record: dict) -> tuple[str, str]:
        return record["applied_at"], record["mes_transaction_id"]

    restored = 0
    for moved in booked.get("movements", []):
        key = (moved["material_number"], moved["location"], moved["unit"])
        count = live.find_transaction(balance_id(f"CUTOVER{switch.seq}", switch.copied_at, key))
        effect = Decimal(moved["after"]) - Decimal(moved["before"])
        if count is None or count.get("transaction_type") != "cycle_count" or order(count) < order(booked):
            continue  # no count for the key, or it came first: the booking stands
        if not effect:
            continue
        restore = parse_event({
            "schema_version": "1",
            "transaction_id": f"CUTOVER{switch.seq}-KEEP-{key_hash((tx, *key))}",
            "timestamp": instant_text(datetime.now(UTC)),
            "source_system": "RECON",
            "target_system": "MES",
            "material_number": key[0],
            "material_type": event.material_type,
            "unit": key[2],
            "location": key[1],
            "transaction_type": "adjustment",
            "reason": "correction",
            "quantity": format(effect, "f"),
            "erp_reference": f"CUTOVER-{switch.seq}",
        })  # fmt: skip
        if live.post_transaction(restore).status == "applied":
            restored += 1
            log.warning("switch %d: the go-live copy overwrote %s at %s; restored %s as %s",
                        switch.seq, tx, key, effect, restore.transaction_id)  # fmt: skip
    return PostResult(booked["mes_transaction_id"], "restored" if restored else "skipped", tx)
