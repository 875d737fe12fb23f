"""What tier progression needs from storage: transactions scoped to a set of merchants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Ladder, Programme, TierState

CustomerKey = tuple[UUID, UUID]  # (merchant_id, customer_id)


@dataclass(frozen=True)
class StateWrite:
    """A customer's new tier state and why it changed (copied into the history row of a move)."""

    merchant_id: UUID
    customer_id: UUID
    state: TierState
    source: str
    cause_event_id: UUID | None
    direction: str
    reason: str
    actor: str = ""


class ProgressionTransaction(Protocol):
    """One transaction scoped to a set of merchants (RLS applies to every statement)."""

    async def setups(self, merchants: Sequence[UUID]) -> dict[UUID, tuple[Programme, Ladder]]:
        """Programme and tiers of each provisioned merchant among `merchants` (others are absent)."""
        ...

    async def record_and_lock(
        self,
        events: Sequence[tuple[UUID, UUID]],
        event_type: str,
        points: Sequence[tuple[UUID, UUID, UUID, date, int]],
        customers: Mapping[CustomerKey, tuple[date | None, date | None]],
    ) -> tuple[set[UUID], dict[CustomerKey, tuple[TierState | None, int]]]:
        """Records (event_id, merchant_id) pairs as processed, adds the (event_id, merchant,
        customer, day, points) contributions of the events recorded now to their days, and locks
        the customers' states: the event ids recorded now (the rest are duplicates), and each
        customer's state (None: no tier) with its points over [first, end), these included."""
        ...

    async def write_states(self, writes: Sequence[StateWrite]) -> None:
        """Inserts or updates the customers' rows (history rows for the moves come with them)."""
        ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def write_moves(self, writes: Sequence[StateWrite], messages: Sequence[OutboxMessage]) -> None:
        """write_states(writes) then add_outbox(messages), in one round trip where it can."""
        ...

    async def reassess_due(
        self, merchants: Sequence[UUID], at: datetime, stamp: datetime, limit: int, after: CustomerKey | None
    ) -> tuple[int, CustomerKey | None, list[tuple[str, str, int]]]:
        """Claims, re-assesses and writes one chunk of due customers: (claimed, last key, moves
        per (direction, reason))."""
        ...


class Progression(Protocol):
    def __call__(self, merchants: Sequence[UUID]) -> AbstractAsyncContextManager[ProgressionTransaction]: ...


class DueMerchants(Protocol):
    async def due_merchants(self, at: datetime, limit: int) -> list[tuple[UUID, int]]:
        """Merchants with customers due at `at`, with their counts (ids only)."""
        ...
