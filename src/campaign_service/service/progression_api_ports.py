"""What the programme and customer-status use cases (service/progression_api.py) need from
storage: one merchant's transaction (RLS scoped to it) with these reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Programme, TierState
from campaign_service.domain.tier_changes import ApplyMode
from campaign_service.domain.tiers import VIPTier


@dataclass(frozen=True)
class StoredProgramme:
    programme: Programme
    updated_at: datetime | None  # None: never set (the defaults)


@dataclass(frozen=True)
class HistoryRow:
    id: int
    from_tier_id: str | None
    tier_id: str
    at: datetime
    direction: str
    reason: str
    program_version: int
    qualifying_points: int
    cause_event_id: UUID | None
    actor: str
    source: str
    config_version: int = 0  # the merchant's configuration version of the move (migration 0031)


@dataclass(frozen=True)
class ManualAssignment:
    """A hand-made tier assignment: the new state (with its floor) and the audit fields."""

    customer_id: UUID
    state: TierState
    moved: bool  # the tier changed (history row + event); else only the floor/period is rewritten
    reason: str
    actor: str


@dataclass(frozen=True)
class Erased:
    states: int
    history: int
    point_days: int


class ProgressionApiTransaction(Protocol):
    async def programme(self, *, for_update: bool = False) -> StoredProgramme: ...

    async def save_programme(self, programme: Programme) -> StoredProgramme:
        """Inserts or updates the programme row; its version moves on by one."""
        ...

    async def tiers(self) -> list[VIPTier]: ...

    async def reschedule(self, period_end: datetime | None, deadline: datetime | None, version: int) -> int:
        """Every customer of the merchant: a new period and deadline (no tier change, no history)."""
        ...

    async def regrace(self, grace_days: int, version: int) -> int:
        """Every customer with a period: deadline = period end + `grace_days`."""
        ...

    async def state(self, customer_id: UUID, *, for_update: bool = False) -> TierState | None: ...

    async def points(self, customer_id: UUID, first: date | None, end: date | None) -> int:
        """The customer's qualifying points over the local days [first, end) (None: unbounded)."""
        ...

    async def history(self, customer_id: UUID, before_id: int | None, limit: int) -> list[HistoryRow]:
        """Newest first, ids below `before_id`."""
        ...

    async def assign(self, assignment: ManualAssignment) -> None:
        """Writes the customer's state (the history trigger records a tier change) and the audit row."""
        ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def enqueue_reassessment(self, mode: ApplyMode) -> UUID | None:
        """When the merchant has customers: queues the re-assessment of all of them in `mode`
        (a job of the job engine, migration 0030) in this transaction, naming the configuration
        version this transaction makes; the job id (None: no customer, no job)."""
        ...

    async def merchant_exists(self) -> bool:
        """Whether the transaction's merchant is provisioned."""
        ...

    async def mark_processed(self, event_id: UUID, event_type: str) -> bool:
        """Records a consumed event; False when it was recorded before (a duplicate)."""
        ...

    async def erase(self, customer_id: UUID) -> Erased:
        """Deletes the customer's tier state, history, manual assignments and qualifying points."""
        ...


class WarningTransaction(ProgressionApiTransaction, Protocol):
    async def warning_candidates(
        self, at: datetime, days: int, after: UUID | None, limit: int
    ) -> list[tuple[UUID, TierState, int]]:
        """Locks customers with a deadline within `days` after `at` not yet warned of, in key order."""
        ...

    async def period_points(self, windows: Sequence[tuple[UUID, date, date]]) -> dict[UUID, int]: ...

    async def record_warnings(self, warned: Sequence[tuple[UUID, datetime]]) -> None: ...


class WarningStore(Protocol):
    def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[WarningTransaction]: ...

    async def warning_merchants(self, at: datetime, limit: int) -> list[UUID]: ...

    async def due_backlog(self, at: datetime) -> tuple[int, datetime | None]: ...


class ProgressionApiStore(Protocol):
    def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[ProgressionApiTransaction]: ...
