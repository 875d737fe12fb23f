"""The event port: what the relay and the handlers need from a transport and from the outbox.

Kafka implements it today (adapters/kafka); a RabbitMQ or SQS adapter would implement the same
protocols with the same payloads (plain dicts that the Avro schemas in avro/ describe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from campaign_service.domain.events import OutboxMessage


@dataclass(frozen=True)
class InboundEvent:
    """A consumed event, decoded: where it came from, its key, payload and string headers."""

    source: str
    key: str | None
    payload: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    # W3C traceparent of the span processing this event (events/tracing.py, tracing on): the
    # outbox rows written for it carry it. None when tracing is off.
    traceparent: str | None = None


class Rejected(Exception):
    """Raised by a handler for an event that can never succeed: the transport dead-letters it
    with `reason` and moves on. Any other exception means "try again later"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Deferred(Exception):
    """The outcome of an event not attempted because an earlier event of its key failed in the
    same batch: it must come again after that one, never be skipped."""

    def __init__(self) -> None:
        super().__init__("an earlier event of the same key failed")


EventHandler = Callable[[InboundEvent], Awaitable[None]]

# What became of each event of a batch: None when it took effect (or was a duplicate), Rejected
# when it can never succeed (dead-letter it), any other exception when it must come again.
Outcome = Exception | None

BatchHandler = Callable[[Sequence[InboundEvent]], Awaitable[list[Outcome]]]
"""Handles a batch (in offset order per partition) and returns one Outcome per event, in order.
Events of one key take effect in their order; once one of them fails (not Rejected), the later
ones of that key in the batch must not take effect (their outcome is Deferred or a failure)."""


class EventPublisher(Protocol):
    """Publishes outbox messages and waits until the transport has them durably."""

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        """One entry per message, in order: None when delivered, else a short error."""
        ...

    async def close(self) -> None: ...


class EventSubscriber(Protocol):
    """Delivers batches of events of one source to a handler, at least once, until `stop` is set.

    A message is acknowledged only after the handler returned None for it (or after it was
    dead-lettered because its outcome was Rejected, or because it could not be decoded)."""

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None: ...


class ClaimedOutbox(Protocol):
    """Outbox rows held by one claim until it ends; nobody else publishes them, nor later rows of
    their keys, meanwhile. Claims of other keys may run at the same time (the outbox is sharded
    by key), so `EventPublisher.publish` may be called for several claims at once."""

    @property
    def messages(self) -> Sequence[OutboxMessage]: ...

    @property
    def more(self) -> bool:
        """Rows are pending that this claim left (past its limit, or held by another claim)."""
        ...

    async def mark_published(self, event_ids: Sequence[UUID]) -> None: ...
    async def mark_failed(self, event_ids: Sequence[UUID], error: str) -> None: ...


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest_age_s: float


class OutboxStore(Protocol):
    def claim(self, limit: int) -> AbstractAsyncContextManager[ClaimedOutbox]: ...
    async def stats(self) -> OutboxStats: ...
    async def purge(self, older_than_s: float) -> int: ...
    async def purge_processed(self, older_than_s: float) -> int: ...


class ProcessedEvents(Protocol):
    """A fast, non-authoritative memory of processed events (the database row is the truth).
    Events are (merchant_id, event_id) pairs; one round trip per call, whatever their number."""

    async def seen(self, events: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        """The event ids among `events` known to be processed."""
        ...

    async def remember(self, events: Sequence[tuple[UUID, UUID]]) -> None: ...
