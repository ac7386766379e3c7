"""The reference MES's publisher: MES-originated events go to the exchange through the MES's own outbox file.

The MES calls it from its request threads (one at a time: the service holds a lock around
``publish``). An ``Outbox`` belongs to one thread, so each call opens the file, enqueues and
flushes. When the broker cannot take the event, the call raises: the MES then keeps the event
in its unpublished table, and the event also waits in the outbox, so the next flush or
``POST /api/v1/production/unpublished/retry`` sends it (consumers drop the copy that may cause).
"""

from __future__ import annotations

from pathlib import Path

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.messaging.outbox import Outbox, OutboxError
from invsync_pipeline.settings import Settings

MES_OUTBOX_FILE = "mes-outbox.sqlite"


class MesPublisher:
    """``publish`` for ``create_app`` / ``run_in_thread`` / ``serve``: enqueue, then flush with confirms."""

    def __init__(self, settings: Settings, path: Path | None = None, flush_seconds: float = 30.0):
        self.settings = settings
        self.path = Path(path) if path is not None else settings.home / MES_OUTBOX_FILE
        self.flush_seconds = flush_seconds
        self.published = 0

    def __repr__(self) -> str:
        return f"MesPublisher({str(self.path)!r})"

    def __call__(self, event: InventoryEvent) -> None:
        with Outbox(self.settings, path=self.path) as box:
            box.enqueue([event])
            result = box.flush(self.flush_seconds)
        if result.pending:
            raise OutboxError(
                f"{result.pending} event(s) still wait in {self.path} after {self.flush_seconds:.0f} s "
                f"({result.stopped_because}); the MES keeps it as unpublished: once the broker is back, "
                "POST /api/v1/production/unpublished/retry sends it"
            )
        self.published += 1
