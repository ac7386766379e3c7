"""The cutover as a layer of the event-driven path: which MES it writes and reads, and when it pauses.

In shadow mode the path writes a shadow MES (the live one is fed by the old batch sync); a switch
(go-live, rollback) pauses every worker at a clean point of the stream; after go-live, a live-MES
booking that the go-live copy overwrote is put back. The worker sees none of this: it asks its
route (``CutoverRoute``, a ``sync.route.LiveRoute`` that knows the cutover) what to do with each
event. The snapshots ask their MES resource, which asks ``mode_at`` here.
"""

from __future__ import annotations

import logging
from datetime import datetime

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.cutover.scope import in_scope
from invsync_pipeline.cutover.state import CutoverState, Switch
from invsync_pipeline.cutover.switch import restore_overwritten
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import MesApi, PostResult
from invsync_pipeline.sync.route import Delivery, LiveRoute, post_or_find

log = logging.getLogger("invsync.sync")


def mode_at(settings: Settings, at: datetime | None = None) -> str:
    """ "live" or "shadow": which MES the event-driven path wrote at ``at`` (None: writes now)."""
    with CutoverState(settings) as state:
        return state.current().mode if at is None else state.mode_at(at)


class CutoverRoute(LiveRoute):
    """The event path during (and after) a cutover from the batch sync (docs/cutover.md)."""

    def __init__(self, settings: Settings, live: MesApi, shadow: MesApi, worker_id: str):
        super().__init__(live)
        self.settings = settings
        self.targets = {"live": live, "shadow": shadow}
        self.worker_id = worker_id
        self.state = CutoverState(settings)
        self._mode = self.state.current()
        self._paused_for: int | None = None
        self._pause_reported = False

    def follow(self) -> str | None:
        """Pause for a switch under way, resume once it is done; heartbeat either way. On "pause"
        the worker finishes its in-flight work and then calls ``paused_cleanly``: only then does
        the heartbeat tell the switch this worker is paused, so the switch's copy never races a
        movement still being applied to the MES the path is leaving."""
        mode = self.state.current()
        change = None
        if mode.switching is not None and self._paused_for != mode.switching.seq:
            log.info("cutover switch %d (%s -> %s): pausing", mode.switching.seq, mode.switching.from_mode,
                     mode.switching.to_mode)  # fmt: skip
            self._paused_for, self._pause_reported, change = mode.switching.seq, False, "pause"
        elif mode.switching is None and self._paused_for is not None:
            log.info("cutover: resuming; the event-driven path is %s", mode.mode)
            self._paused_for, change = None, "resume"
        self.paused = self._paused_for is not None
        self._mode = mode
        self.state.heartbeat(self.worker_id, self._paused_for if self._pause_reported else None)
        return change

    def paused_cleanly(self) -> None:
        """The worker has nothing in flight any more: report the pause to the switch."""
        self._pause_reported = True
        self.state.heartbeat(self.worker_id, self._paused_for)

    def deliver(self, event: InventoryEvent) -> Delivery:
        mode = self._mode.mode
        if (go_live := self._go_live_overwrote(event)) is not None:
            # Booked in the live MES before go-live and maybe overwritten by its copy: look, and
            # put back what the copy took (cutover/switch.py).
            return Delivery(apply=lambda: self._restore(go_live, event))
        if (event.source_system == "MES" and mode == "live") or (
            event.source_system == "RECON" and event.target_system == "ERP"
        ):
            return Delivery(skip="already in the live MES, or a correction meant for the ERP")
        if not in_scope(self.settings, event.material_type, event.timestamp):
            return Delivery(skip="outside the cutover's pilot scope: the batch sync carries it")
        target, earlier = self.targets[mode], self._before_switch_target(event)
        if earlier is None:
            return Delivery(batch_to=target)
        return Delivery(apply=lambda: self._apply(target, earlier, event))

    def leave(self) -> None:
        # A stopped worker need not pause for a switch.
        try:
            self.state.leave(self.worker_id)
        finally:
            self.state.close()
            self.targets["shadow"].close()

    def _apply(self, target: MesApi, earlier: MesApi, event: InventoryEvent) -> PostResult:
        if (found := earlier.find_transaction(event.transaction_id)) is not None:
            # Applied before the switch (its ack was lost then); the switch's copy carried it over.
            return PostResult(found["mes_transaction_id"], "duplicate", event.transaction_id)
        return post_or_find(target, event)

    def _restore(self, switch: Switch, event: InventoryEvent) -> PostResult:
        with CutoverState(self.settings) as state:  # this runs off the worker's I/O thread
            since = state.last_copy_into("shadow", before=switch.requested_at)
        return restore_overwritten(switch, event, self.targets["live"], self.targets["shadow"], since)

    def _go_live_overwrote(self, event: InventoryEvent) -> Switch | None:
        """The go-live whose copy may have overwritten this live-MES booking, if any."""
        last = self._mode.last
        if (
            event.source_system != "MES"
            or self._mode.mode != "live"
            or last is None
            or last.from_mode != "shadow"
            or last.completed_at is None
            or event.timestamp >= last.completed_at
            or not in_scope(self.settings, event.material_type, last.completed_at)
        ):
            return None
        return last

    def _before_switch_target(self, event: InventoryEvent) -> MesApi | None:
        """The MES the path wrote before the last switch, for an event older than that switch."""
        last = self._mode.last
        if last is None or last.completed_at is None or event.timestamp >= last.completed_at:
            return None
        return self.targets[last.from_mode]
