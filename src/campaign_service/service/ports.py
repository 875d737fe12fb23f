"""What the use cases need from the outside, as protocols; adapters implement them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.access import Principal
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.tiers import TierSpec, VIPTier


@dataclass(frozen=True)
class CustomerAssignment:
    merchant_id: UUID
    customer_id: UUID
    tier_id: str
    assigned_at: datetime
    source: str
    cause_event_id: UUID | None


class TenantTransaction(Protocol):
    """One database transaction scoped to one merchant (RLS applies to every statement)."""

    async def get_tier(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None: ...
    async def list_tiers(self) -> list[VIPTier]: ...
    async def count_tiers(self) -> int: ...
    async def evaluate(self, points: int) -> VIPTier | None: ...
    async def default_tier(self) -> VIPTier | None: ...
    async def insert_tier(self, tier_id: str, spec: TierSpec) -> VIPTier: ...
    async def update_tier(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier: ...
    async def clear_default(self, except_tier_id: str) -> list[str]: ...
    async def delete_tier(self, tier_id: str) -> None: ...
    async def customers_holding(self, tier_id: str) -> int: ...
    async def get_customer(self, customer_id: UUID) -> CustomerAssignment | None: ...
    async def assign(self, assignments: Sequence[CustomerAssignment]) -> set[UUID]:
        """Gives each customer without a tier its first one, in order; the customers assigned now."""
        ...

    async def mark_processed(self, event_ids: Sequence[UUID], event_type: str) -> set[UUID]:
        """Records consumed events; the ids not recorded before (the others are duplicates).
        Raises NotFound when the merchant is not provisioned."""
        ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Writes messages to the outbox, to be published in this order after the commit."""
        ...


class UnitOfWork(Protocol):
    """Opens a transaction for a merchant; it commits when the block exits cleanly."""

    def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[TenantTransaction]: ...


class TierChangeListener(Protocol):
    """Told after a commit that a merchant's tiers changed (cache invalidation hooks here)."""

    async def tiers_changed(self, merchant_id: UUID, tier_ids: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class ViewKey:
    """One cached answer: a tier (tier_id) or the merchant's list (tier_id None) in one display locale."""

    merchant_id: UUID
    tier_id: str | None
    locale: str


@dataclass(frozen=True)
class CachedView:
    """What a cache lookup found: the value (hit), or a ticket to fill it with (miss), or neither
    (no cache in use right now: read from the database and do not fill)."""

    value: bytes | None = None
    ticket: str | None = None


class ViewCache(TierChangeListener, Protocol):
    """Serialized read answers. A fill only lands if no invalidation of its key happened since the
    lookup that handed out the ticket, so a value read before a write cannot outlive the write."""

    async def lookup(self, key: ViewKey) -> CachedView: ...
    async def fill(self, key: ViewKey, ticket: str, value: bytes) -> bool: ...


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    limiter: str = "local"  # which limiter decided: "redis" (shared) or "local" (this instance)


class RateLimiter(Protocol):
    """Counts one request of a merchant against its limit."""

    async def acquire(self, merchant_id: UUID) -> RateDecision: ...


class TokenVerifier(Protocol):
    """Turns a bearer token into the principal it was issued to.

    Raises Unauthenticated for a token that is not valid and Unavailable when the means of
    checking it (JWKS URL, Auth Service) cannot be reached: callers fail closed.
    """

    async def verify(self, token: str) -> Principal: ...
