"""Which events not to post to the MES, looked up just before the call, for a whole batch at once.

Two kinds: those the sync log has as in the MES already ("duplicate": no MES call), and those a
correction stands for by an adjustment ("compensated": applying the late original as well would
count it twice, ops/compensations.py). Called from the worker's pool threads.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.ops.compensations import compensated_many, registry
from invsync_pipeline.settings import Settings
from invsync_pipeline.sources.mes import PostResult
from invsync_pipeline.sync.sync_log import SyncLog

log = logging.getLogger("invsync.sync")


class Screen:
    def __init__(self, settings: Settings, sync_log: SyncLog):
        self.settings, self.sync_log = settings, sync_log
        self._registry: sqlite3.Connection | None = None  # the compensation registry, opened on first use
        self._lock = threading.Lock()  # the pool's threads share that one connection

    def __call__(self, events: list[InventoryEvent]) -> dict[str, PostResult]:
        """transaction_id -> its outcome, for the events not to post."""
        ids = [e.transaction_id for e in events]
        found = {tx: PostResult(mes_id, "duplicate", tx) for tx, mes_id in self.sync_log.seen_many(ids).items()}
        with self._lock:
            if self._registry is None:
                self._registry = registry(self.settings, any_thread=True)
            compensated = compensated_many(self._registry, [i for i in ids if i not in found], "MES")
        for tx, correction in compensated.items():
            log.info("compensated tx=%s by %s: not applied", tx, correction)
            found[tx] = PostResult(None, "compensated", tx)  # type: ignore[arg-type]
        return found

    def close(self) -> None:
        with self._lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
