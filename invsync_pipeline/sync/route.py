"""Where the sync worker sends one event: the small object between the worker and the MES.

``LiveRoute`` is a plant without a cutover: every event of the path goes to the live MES, and
the worker never pauses. The cutover (cutover/routing.py) is a ``LiveRoute`` that knows more:
shadow mode, pauses for a switch, bookings a go-live's copy overwrote. The worker only ever asks
``deliver`` and ``follow``, so the cutover can be removed as one folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.sources.mes import MesApi, MesError, PostResult

log = logging.getLogger("invsync.sync")


@dataclass(frozen=True)
class Delivery:
    """What to do with one event: ack it as skipped (``skip`` says why), post it to ``batch_to``
    together with the other events bound there (sync/batches.py), or run ``apply`` (a call of its
    own, off the worker's I/O thread); then ack with the result."""

    skip: str | None = None
    apply: Callable[[], PostResult] | None = None
    batch_to: MesApi | None = None


class LiveRoute:
    """Every event for the MES goes to the live MES."""

    def __init__(self, live: MesApi):
        self.live = live
        self.paused = False

    def follow(self) -> str | None:
        """Called a few times a second by the worker's loop: "pause" (finish what is in flight
        and stop consuming), "resume", or None. A live-only plant never pauses."""
        return None

    def paused_cleanly(self) -> None:
        """Called once the worker finished its in-flight work after a "pause"."""

    def deliver(self, event: InventoryEvent) -> Delivery:
        if event.source_system == "MES":
            return Delivery(skip="already in the MES: it originated there")
        if event.source_system == "RECON" and event.target_system == "ERP":
            return Delivery(skip="a correction meant for the ERP")
        return Delivery(batch_to=self.live)

    def leave(self) -> None:
        """The worker stops: release what the route holds."""


def post_or_find(mes: MesApi, event: InventoryEvent) -> PostResult:
    """Post the event. If the MES did not answer (a timeout, a dropped connection, a 5xx), it may
    have applied it all the same: look it up before it goes to a retry tier or parking, so an
    applied movement is neither retried for nothing nor parked as "MES unavailable"."""
    try:
        return mes.post_transaction(event)
    except MesError as unanswered:
        if not unanswered.retryable:
            raise
        try:
            found = mes.find_transaction(event.transaction_id)
        except MesError:
            raise unanswered from None  # it cannot be asked either: retry later
        if found is None or found.get("status") not in ("applied", "not_applicable"):
            raise
        log.info("tx=%s: the MES did not answer the post but has applied it (%s)", event.transaction_id, unanswered)
        return PostResult(found["mes_transaction_id"], "applied", event.transaction_id)


def post_many_or_find(mes: MesApi, events: list[InventoryEvent]) -> list[PostResult | MesError]:
    """``post_or_find`` for a batch: a result (or the error) per event, in order. When the MES did
    not answer the batch, each event is looked up; those it has applied count as applied."""
    try:
        return list(mes.post_transactions(events))
    except MesError as unanswered:
        if not unanswered.retryable:
            return [unanswered] * len(events)
        outcomes: list[PostResult | MesError] = []
        for event in events:
            try:
                found = mes.find_transaction(event.transaction_id)
            except MesError:
                return outcomes + [unanswered] * (len(events) - len(outcomes))  # cannot be asked: retry later
            if found is not None and found.get("status") in ("applied", "not_applicable"):
                outcomes.append(PostResult(found["mes_transaction_id"], "applied", event.transaction_id))
            else:
                outcomes.append(unanswered)
        return outcomes
