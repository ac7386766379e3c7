"""Micro-batching for the sync worker: the events bound for one MES go to it in one call.

On the worker's I/O thread, each event the route sends to an MES joins that MES's open batch.
A batch goes out when it holds ``sync.batch_max_events`` events, or ``sync.batch_window_ms``
after its first event arrived, whichever comes first: a critical movement never waits longer
than the window. The call runs on the worker's pool (one MES call for the whole batch, a result
per event), and the outcomes come back to the I/O thread, which acks, retries or parks each
event on its own exactly as for a single post.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from invsync_pipeline.contract import InventoryEvent
from invsync_pipeline.sources.mes import MesApi, MesUnavailable, PostResult
from invsync_pipeline.sync.route import post_many_or_find

log = logging.getLogger("invsync.sync")

Outcomes = Callable[[list[Any], list[Any], int], None]  # (jobs, outcome per job, confirmed ms)
Screen = Callable[[list[InventoryEvent]], dict[str, PostResult]]  # the events not to post, with their outcome


@dataclass
class _Open:
    target: MesApi
    jobs: list[Any] = field(default_factory=list)


class Batcher:
    """The open batch per MES of one worker connection (all methods on the I/O thread)."""

    def __init__(self, pool: ThreadPoolExecutor, max_events: int, window_ms: float, screen: Screen,
                 outcomes: Outcomes, stats: Any):  # fmt: skip
        self.pool, self.max_events, self.window_s = pool, max_events, window_ms / 1000
        self.screen, self.outcomes = screen, outcomes
        self.stats = stats  # the worker's figures: mes_calls counts each batch
        self._open: dict[int, _Open] = {}

    def add(self, conn: Any, target: MesApi, job: Any) -> None:
        """Queue ``job`` (with ``.event``) for ``target``; sends the batch when it is full."""
        key = id(target)
        batch = self._open.setdefault(key, _Open(target))
        batch.jobs.append(job)
        if len(batch.jobs) >= self.max_events:
            self._send(conn, key)
        elif len(batch.jobs) == 1:
            conn.call_later(self.window_s, partial(self._send, conn, key))

    def flush(self, conn: Any) -> None:
        """Send every open batch now (before a pause or a stop)."""
        for key in list(self._open):
            self._send(conn, key)

    def clear(self) -> None:
        """Forget open batches: their connection is gone, and the broker delivers them again."""
        self._open.clear()

    def _send(self, conn: Any, key: int) -> None:
        batch = self._open.pop(key, None)
        if batch is None or not batch.jobs:
            return  # sent already (full), or from a connection since dropped
        future = self.pool.submit(self._call, conn, batch.target, batch.jobs)
        for job in batch.jobs:
            job.future = future

    def _call(self, conn: Any, target: MesApi, jobs: list[Any]) -> None:
        """Pool thread: one MES call for the batch (for the events the screen lets through); never
        touches the channel."""
        try:
            settled = self.screen([job.event for job in jobs])
            to_post = [job.event for job in jobs if job.event.transaction_id not in settled]
            if to_post:
                self.stats.mes_calls += 1
            posted = iter(post_many_or_find(target, to_post) if to_post else [])
            outcomes: list[Any] = [settled.get(job.event.transaction_id) or next(posted) for job in jobs]
        except Exception as exc:  # noqa: BLE001 - an unexpected client error is retried, not lost
            outcomes = [MesUnavailable(f"unexpected error calling the MES: {exc!r}", "")] * len(jobs)
        confirmed_ms = time.time_ns() // 1_000_000
        try:
            conn.add_callback_threadsafe(partial(self.outcomes, jobs, outcomes, confirmed_ms))
        except Exception:  # noqa: BLE001 - connection gone: the broker redelivers, the MES dedupes
            log.warning("connection closed before a batch of %d could be acked; it will be redelivered", len(jobs))
