"""Turning a progression evaluation into what a transaction writes: the state row and, for a move,
the `vip_tier.assigned` outbox message (no message when nothing moved)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from uuid import UUID

from campaign_service import metrics
from campaign_service.domain import events
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Evaluation, Programme
from campaign_service.service.progression_ports import StateWrite


def millis(ts: datetime) -> datetime:
    """Millisecond precision: what the database stores is what the event says."""
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def moved(
    merchant: UUID,
    customer: UUID,
    evaluation: Evaluation,
    programme: Programme,
    *,
    source: str,
    cause_event_id: UUID | None,
    correlation_id: str,
    actor: str = "",
) -> tuple[StateWrite, OutboxMessage] | None:
    """The state write and the event of a move; None when the tier did not change."""
    move, state = evaluation.move, evaluation.state
    if move is None or state is None:
        return None
    write = StateWrite(merchant, customer, state, source, cause_event_id, move.direction, move.reason, actor)
    message = events.tier_assigned(
        event_id=uuid.uuid4(),
        merchant_id=merchant,
        customer_id=customer,
        tier_id=move.tier_id,
        assigned_at=state.since,
        correlation_id=correlation_id,
        cause_event_id=cause_event_id,
        previous_tier_id=move.previous_tier_id,
        direction=move.direction,
        reason=move.reason,
        bonus_points=move.bonus_points,
        program_version=programme.version,
    )
    return write, message


def count_moves(writes: list[StateWrite]) -> None:
    for (direction, reason), n in Counter((w.direction, w.reason) for w in writes).items():
        metrics.TIER_MOVES.labels(direction, reason).inc(n)
