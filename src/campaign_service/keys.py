"""Redis key names and their lifetimes, in one place (the plan's names)."""

from __future__ import annotations

from uuid import UUID

PROCESSED_TTL_S = 24 * 3600


def processed(merchant_id: UUID, event_id: UUID) -> str:
    """Marks a consumed event as processed (fast path only; processed_events is the truth)."""
    return f"processed:{merchant_id}:{event_id}"
