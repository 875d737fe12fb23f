"""The unit of work: one merchant's transaction as a use case holds it.

    async with uow(merchant_id) as work:
        tier = await work.tiers.get(tier_id, for_update=True)
        ...
        work.emit(events.tier_updated(...))

opens a transaction scoped to the merchant whose repositories are `work.tiers`,
`work.customers` and `work.inbox`. A use case emits the events of a change where it makes it;
the unit of work writes them to the outbox, in the order emitted, as the last statements before
the commit, and only when the block exits cleanly (an exception rolls back the change and its
events alike). It also records the tiers written through `work.tiers`: `work.changed_tier_ids`
is what the caller invalidates after the commit.

Adapters (PostgreSQL; the in-memory fakes in tests/fakes.py) subclass `AbstractUnitOfWork` and
only open a transaction and its repositories (`_transaction`); what happens around them is here,
once, so the fakes run the same rules as production.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol
from uuid import UUID

from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.service.ports import (
    CustomerTierRepository,
    InboxRepository,
    LocaleRepository,
    Repositories,
    TierChangeJobs,
    TierRepository,
)


class UnitOfWork(Protocol):
    """Opens a transaction for a merchant; it commits when the block exits cleanly."""

    def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[TenantUnitOfWork]: ...


class TenantUnitOfWork:
    """One merchant's open transaction: its repositories, the events to publish if it commits,
    and the tiers it wrote."""

    def __init__(self, repositories: Repositories) -> None:
        self._tiers = _TrackedTiers(repositories.tiers)
        self._outbox = repositories.outbox
        self._cache_epoch = repositories.cache_epoch
        self._events: list[OutboxMessage] = []
        self.tiers: TierRepository = self._tiers
        self.customers: CustomerTierRepository = repositories.customers
        self.inbox: InboxRepository = repositories.inbox
        self.tier_change_jobs: TierChangeJobs = repositories.tier_change_jobs
        self.locales: LocaleRepository = repositories.locales
        # The block ran to its end and its events are written: the commit is under way or done.
        self.completed = False

    def emit(self, *messages: OutboxMessage) -> None:
        """Publishes `messages` after the commit (written to the outbox in this transaction)."""
        self._events.extend(messages)

    @property
    def changed_tier_ids(self) -> list[str]:
        """The tiers inserted, updated, deleted or cleared as default, in the order first written."""
        return list(self._tiers.written)

    def invalidate(self, tier_ids: Sequence[str]) -> None:
        """Counts `tier_ids` as written: their cached answers go after the commit (a change that
        alters how tiers display without writing them, e.g. the merchant's locales)."""
        self._tiers.written.update(dict.fromkeys(tier_ids))

    async def bump_cache_epoch(self) -> None:
        """Advances the read cache's durable epoch in this transaction (adapters/redis/cache.py)."""
        await self._cache_epoch.advance()

    async def complete(self) -> None:
        """Writes the emitted events to the outbox: the adapter's last step before its commit."""
        messages, self._events = self._events, []
        await self._outbox.add(messages)
        self.completed = True


class AbstractUnitOfWork(ABC):
    """A UnitOfWork over an adapter's transactions: the adapter opens them (`_transaction`)."""

    @asynccontextmanager
    async def __call__(self, merchant_id: UUID, *, readonly: bool = False) -> AsyncIterator[TenantUnitOfWork]:
        async with self._transaction(merchant_id, readonly=readonly) as repositories:
            work = TenantUnitOfWork(repositories)
            yield work
            await work.complete()

    @abstractmethod
    def _transaction(self, merchant_id: UUID, *, readonly: bool) -> AbstractAsyncContextManager[Repositories]:
        """A transaction scoped to the merchant that commits when its block exits cleanly."""


class _TrackedTiers:
    """The tier repository, remembering which tiers were written (cosmicpython's `seen`)."""

    def __init__(self, inner: TierRepository) -> None:
        self._inner = inner
        self.written: dict[str, None] = {}  # an ordered set

    async def get(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None:
        return await self._inner.get(tier_id, for_update=for_update)

    async def all(self) -> list[VIPTier]:
        return await self._inner.all()

    async def count(self) -> int:
        return await self._inner.count()

    async def evaluate(self, points: int) -> VIPTier | None:
        return await self._inner.evaluate(points)

    async def default(self) -> VIPTier | None:
        return await self._inner.default()

    async def insert(self, tier_id: str, spec: TierSpec) -> VIPTier:
        tier = await self._inner.insert(tier_id, spec)
        self.written[tier_id] = None
        return tier

    async def update(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier:
        tier = await self._inner.update(tier_id, spec, changed)
        self.written[tier_id] = None
        return tier

    async def clear_default(self, except_tier_id: str) -> list[str]:
        cleared = await self._inner.clear_default(except_tier_id)
        self.written.update(dict.fromkeys(cleared))
        return cleared

    async def delete(self, tier_id: str) -> None:
        await self._inner.delete(tier_id)
        self.written[tier_id] = None
