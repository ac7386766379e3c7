"""What the outbox hands back to its callers: the result dataclasses and the errors they catch.

They live apart from ``outbox.py`` so that both the store (``outbox.py``) and the AMQP publisher
(``outbox_publisher.py``) can import them without importing each other. Import them from
``invsync_pipeline.messaging.outbox``, which re-exports every one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from invsync_pipeline.messaging.connection import BrokerUnavailable


class OutboxError(RuntimeError):
    """The outbox refused or stopped; the message says what happened and what to do."""


class OutboxFull(OutboxError):
    """Accepting the events would exceed ``outbox.capacity_events``; none of them was accepted."""


class OutboxBusy(OutboxError):
    """Another process (or Outbox object) is flushing the same outbox file right now."""


class FlushStopped(OutboxError):
    """A flush stopped before the outbox was empty; every unconfirmed event is still buffered."""

    def __init__(self, message: str, result: FlushResult | None = None):
        super().__init__(message)
        self.result = result


class UnroutableEvents(FlushStopped):
    """The broker returned events no queue is bound for (mandatory publish)."""


class ExchangeMissing(FlushStopped):
    """The topic exchange does not exist on the broker."""


class PublishNacked(FlushStopped):
    """The broker nacked a publish (it could not take responsibility for the message)."""


class BrokerLost(BrokerUnavailable):
    """The broker was unreachable or the connection dropped during a flush; nothing was lost."""

    def __init__(self, message: str, result: FlushResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class EnqueueResult:
    accepted: int
    duplicates: tuple[str, ...]  # transaction ids already buffered (or repeated in the call): no-ops
    pending: int


@dataclass(frozen=True)
class FlushResult:
    published: int  # confirmed by the broker and removed from the outbox
    pending: int  # still buffered after this flush
    seconds: float
    stopped_because: str  # "empty", "time budget", or the error

    def summary(self) -> str:
        return (f"published {self.published} in {self.seconds:.2f} s, {self.pending} still buffered "
                f"(stopped: {self.stopped_because})")  # fmt: skip


@dataclass(frozen=True)
class PublishResult:
    enqueued: EnqueueResult
    published: int
    pending: int  # buffered locally, waiting for the broker
    broker_error: str | None = None  # why the flush did not empty the outbox, if it did not

    @property
    def duplicates(self) -> tuple[str, ...]:
        return self.enqueued.duplicates


@dataclass(frozen=True)
class OutboxStatus:
    path: str
    pending: int
    capacity: int
    oldest_enqueued_at: datetime | None
    newest_enqueued_at: datetime | None
    by_routing_key: dict[str, int] = field(default_factory=dict)
