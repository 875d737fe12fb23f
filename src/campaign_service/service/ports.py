"""What the use cases need from the outside, as protocols; adapters implement them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.access import Principal
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.locales import MerchantLocales
from campaign_service.domain.tier_changes import ApplyMode, TierChangeJob
from campaign_service.domain.tiers import TierSpec, VIPTier


@dataclass(frozen=True)
class CustomerAssignment:
    merchant_id: UUID
    customer_id: UUID
    tier_id: str
    assigned_at: datetime
    source: str
    cause_event_id: UUID | None


class TierRepository(Protocol):
    """A merchant's VIP tier definitions."""

    async def get(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None:
        """The tier; with `for_update`, row-locked until the transaction ends."""
        ...

    async def all(self) -> list[VIPTier]:
        """Every tier, by min_points then tier_id."""
        ...

    async def count(self) -> int: ...

    async def evaluate(self, points: int) -> VIPTier | None:
        """The highest tier whose min_points the balance reaches (ties: the greatest tier_id)."""
        ...

    async def default(self) -> VIPTier | None: ...

    async def insert(self, tier_id: str, spec: TierSpec) -> VIPTier:
        """Raises AlreadyExists, NotFound (merchant not provisioned), VersionConflict (another
        default tier exists) or InvalidArgument (a database check refused a value)."""
        ...

    async def update(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier:
        """Writes `spec` (the tier's version and updated_at move on); `changed` names the fields
        that differ, so unchanged translations are not rewritten."""
        ...

    async def clear_default(self, except_tier_id: str) -> list[str]:
        """Makes no tier but `except_tier_id` the default; the tier ids that were."""
        ...

    async def delete(self, tier_id: str) -> None: ...


class CustomerTierRepository(Protocol):
    """The tier each customer of a merchant holds."""

    async def get(self, customer_id: UUID) -> CustomerAssignment | None: ...

    async def assign(self, assignments: Sequence[CustomerAssignment]) -> set[UUID]:
        """Gives each customer without a tier its first one, in order; the customers assigned now."""
        ...

    async def holders(self, tier_id: str) -> int:
        """How many customers hold the tier."""
        ...

    async def any(self) -> bool:
        """Whether any customer holds a tier."""
        ...


class InboxRepository(Protocol):
    """The consumed events already applied: the authoritative dedupe."""

    async def mark_processed(self, event_ids: Sequence[UUID], event_type: str) -> set[UUID]:
        """Records consumed events; the ids not recorded before (the others are duplicates).
        Raises NotFound when the merchant is not provisioned."""
        ...


class Outbox(Protocol):
    """Messages to publish once the transaction has committed."""

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """Writes messages to the outbox, to be published in this order after the commit."""
        ...


class CacheEpoch(Protocol):
    """The read cache's durable epoch (adapters/redis/cache.py)."""

    async def advance(self) -> None:
        """Advances it in this transaction: every answer cached under an older epoch stops being
        trusted once the transaction commits."""
        ...


class TierChangeJobs(Protocol):
    """The merchant's re-assessment jobs (issue 14; migration 0030)."""

    async def enqueue(
        self, change_id: UUID, *, mode: ApplyMode, config_version: int, not_before: datetime | None = None
    ) -> UUID:
        """Queues the re-assessment of every customer for `change_id` in this transaction (it
        starts once committed and `not_before`, None: now, has come); the job id. Idempotent per
        change: a change already enqueued answers its job and adds nothing."""
        ...

    async def get(self, job_id: UUID) -> TierChangeJob | None: ...

    async def move_holders(self, tier_id: str, *, mode: ApplyMode, job_id: UUID) -> int:
        """Moves every holder of `tier_id` (about to be deleted) in this transaction, by `mode`,
        as the job `job_id` does (state, history, one event each, reason program_change); how many."""
        ...


class LocaleRepository(Protocol):
    """The locales a merchant stores text in (migration 0040: the database holds every tier
    writer to them)."""

    async def get(self, *, for_update: bool = False) -> MerchantLocales:
        """The merchant's set (the default set, version 0, when it never chose one); with
        `for_update`, locked until the transaction ends."""
        ...

    async def save(self, locales: tuple[str, ...]) -> MerchantLocales:
        """Stores the set (its version moves on). Raises FailedPrecondition when the database
        refuses it because a removed locale is still used (tier text, a pending scheduled change),
        InvalidArgument when it refuses a tag."""
        ...

    async def scheduled_uses(self) -> list[tuple[str, frozenset[str]]]:
        """(what, locales) of each pending scheduled tier change that will write text: the
        locales it writes (migration 0041 keeps them in the set, as tier text keeps its own)."""
        ...


class Repositories(Protocol):
    """What one database transaction scoped to one merchant holds (RLS applies to every
    statement). A new kind of record gets its repository here and on TenantUnitOfWork."""

    @property
    def tiers(self) -> TierRepository: ...
    @property
    def customers(self) -> CustomerTierRepository: ...
    @property
    def inbox(self) -> InboxRepository: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def cache_epoch(self) -> CacheEpoch: ...
    @property
    def tier_change_jobs(self) -> TierChangeJobs: ...
    @property
    def locales(self) -> LocaleRepository: ...


AfterCommit = Callable[[], Awaitable[None]]
EpochBump = Callable[[], Awaitable[None]]


class TierChangeListener(Protocol):
    """Told of a tier change inside its transaction, as the use case's last step before the
    commit (cache invalidation hooks here). `bump_cache_epoch` advances the durable cache epoch in
    that same transaction. The returned step runs after the commit, also when the commit's outcome
    is unknown or it failed; it never raises."""

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit: ...


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
    async def fill(self, key: ViewKey, ticket: str, value: bytes, ttl_s: int | None = None) -> bool:
        """Stores `value` if the ticket still holds; the entry lives at most `ttl_s` (None: the
        cache's TTL) from its first fill, so a shorter TTL must be passed by every fill of a key
        that needs it (service/reads.py does, until a scheduled change's time)."""
        ...


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
