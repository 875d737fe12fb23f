"""What scheduled (effective-dated) changes need from storage: one merchant's transaction (RLS
scoped to it) over its tiers, programme, pending changes and outbox, and two cross-merchant
reads for the activator that name merchants and times only."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Programme
from campaign_service.domain.scheduled import ChangeKind, ChangeState, TierEdit
from campaign_service.domain.tier_changes import ApplyMode
from campaign_service.domain.tiers import VIPTier
from campaign_service.service.progression_api_ports import ProgressionApiTransaction, StoredProgramme


@dataclass(frozen=True)
class ScheduledChange:
    change_id: UUID
    merchant_id: UUID
    target: str  # a tier id, or "_program"
    kind: ChangeKind
    effective_at: datetime
    # How customers are re-assessed at its time; None only for a tier delete made without one
    # (then it fails at its time if customers hold the tier).
    mode: ApplyMode | None
    state: ChangeState = "pending"
    tier: TierEdit | None = None
    program: Programme | None = None  # the values of a programme edit
    program_mask: tuple[str, ...] = ()
    created_at: datetime | None = None
    created_by: str = ""
    config_version: int | None = None
    finished_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class PastConfiguration:
    """The configuration (tiers, programme) in force at a past time, as kept (migration 0032)."""

    tiers: list[VIPTier]
    programme: StoredProgramme
    version: int  # the configuration version (0: before the merchant's first configuration)


@dataclass(frozen=True)
class NotKept:
    """A past time before the configurations kept: the earliest time one is known from."""

    kept_from: datetime


class ScheduledTransaction(Protocol):
    @property
    def progression(self) -> ProgressionApiTransaction:
        """The programme side of the same transaction."""
        ...

    async def tiers(self, *, for_update: bool = False) -> list[VIPTier]:
        """Every tier (by min_points, tier_id); with `for_update`, row-locked until commit."""
        ...

    async def tier(self, tier_id: str) -> VIPTier | None: ...

    async def locales(self, *, lock: bool = False) -> tuple[str, ...]:
        """The locales the merchant stores text in (issue 16); with `lock`, held FOR SHARE until
        the transaction ends (the set cannot change under a write that relies on it)."""
        ...

    async def configuration_at(self, at: datetime) -> PastConfiguration | NotKept:
        """The configuration version in force at `at` (the newest one in force from `at` or
        before), as committed; empty before the merchant's first configuration; NotKept before
        the configuration of a merchant configured before configurations were kept."""
        ...

    async def write_tiers(self, before: Sequence[VIPTier], after: Sequence[VIPTier], effective_at: datetime) -> None:
        """Makes the stored tiers `after` (they were `before`): deletes, updates, inserts with the
        ids, versions and times `after` holds. Raises FailedPrecondition for a deleted tier that
        customers hold, InvalidArgument for a value the database refuses."""
        ...

    async def take_effect_at(self, effective_at: datetime) -> None:
        """What this transaction writes of the configuration takes effect at `effective_at` (the
        tiers' updated_at, the configuration version's valid_from), not at the commit."""
        ...

    async def pending(self) -> list[ScheduledChange]:
        """The merchant's pending changes, by effective_at."""
        ...

    async def changes(self, *, include_finished: bool, limit: int) -> list[ScheduledChange]:
        """Pending changes by effective_at; with `include_finished`, then the others, newest first."""
        ...

    async def get(self, change_id: UUID, *, for_update: bool = False) -> ScheduledChange | None: ...

    async def insert(self, change: ScheduledChange) -> ScheduledChange:
        """Raises FailedPrecondition when a pending change for the same target exists."""
        ...

    async def claim_due(self, at: datetime) -> ScheduledChange | None:
        """The earliest pending change due at `at`, locked; skips one another replica holds."""
        ...

    async def finish(
        self, change_id: UUID, state: ChangeState, *, config_version: int | None, error: str | None, actor: str
    ) -> None: ...

    async def config_version(self) -> int:
        """The merchant's configuration version as this transaction sees it."""
        ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def bump_cache_epoch(self) -> None: ...

    async def enqueue_reassessment(
        self, change_id: UUID, mode: ApplyMode | None, config_version: int, not_before: datetime
    ) -> UUID:
        """Queues the re-assessment of every customer of the merchant (the job engine's), in
        this transaction (None: the default mode); once per change: again, it answers the same
        job and sets its configuration version. The job id."""
        ...

    async def move_holders(self, tier_id: str, mode: ApplyMode, job_id: UUID, stamp: datetime) -> int:
        """Moves the customers holding `tier_id` as deleting it in `mode` does (the job
        engine's statement), flagged with `job_id`, at `stamp`; how many moved."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested transaction: an exception inside undoes only what was done inside."""
        ...


class ScheduledStore(Protocol):
    def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[ScheduledTransaction]: ...

    async def due_merchants(self, at: datetime, limit: int) -> list[UUID]:
        """Merchants with a pending change due at `at` (ids only)."""
        ...

    async def next_due(self) -> datetime | None:
        """When the earliest pending change of any merchant is due."""
        ...
