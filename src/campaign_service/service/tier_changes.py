"""PreviewTierChange (issue 14): who would move, and where, if a proposed change were applied.

The proposal (tier thresholds and entry bonuses created or changed, tiers deleted, a programme
patch) is turned into the configuration it would make, and that configuration is
evaluated over every customer by the same statement a re-assessment job applies
(adapters/postgres/tier_change_jobs.py), read-only: nothing is stored or locked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from campaign_service.domain.errors import invalid
from campaign_service.domain.progression import Ladder, Level, Programme
from campaign_service.domain.tier_changes import ApplyMode, Matrix, apply_mode
from campaign_service.domain.tiers import check_tier_id
from campaign_service.service.progression_api import patched_programme, program_mask

MAX_SAMPLES = 100


class TierChangePreviews(Protocol):
    async def setup(self, merchant_id: UUID) -> tuple[Programme, Ladder]: ...

    async def preview_change(
        self, merchant_id: UUID, programme: Programme, ladder: Ladder, mode: ApplyMode, gone_tiers: Sequence[str],
        stamp: datetime, samples: int,
    ) -> Matrix: ...  # fmt: skip


@dataclass(frozen=True)
class TierEdit:
    """A tier created or changed by the proposal: what qualification needs of it."""

    tier_id: str
    min_points: int
    bonus_points: int = 0


class TierChangePreviewer:
    def __init__(self, previews: TierChangePreviews) -> None:
        self._previews = previews

    async def preview(
        self,
        merchant_id: UUID,
        *,
        tiers: list[TierEdit],
        delete_tier_ids: list[str],
        programme: Programme | None = None,
        programme_paths: list[str] | None = None,
        mode: str,
        samples: int = 5,
        now: datetime | None = None,
    ) -> Matrix:
        checked = apply_mode(mode)
        if not 0 <= samples <= MAX_SAMPLES:
            raise invalid("samples_per_cell", f"must be 0..{MAX_SAMPLES}")
        current, ladder = await self._previews.setup(merchant_id)
        levels = {lv.tier_id: lv for lv in ladder.levels}
        for i, edit in enumerate(tiers):
            check_tier_id(edit.tier_id, f"tiers[{i}].tier_id")
            if edit.min_points < 0:
                raise invalid(f"tiers[{i}].min_points", "must be >= 0")
            old = levels.get(edit.tier_id)
            default = old.is_default if old else False
            levels[edit.tier_id] = Level(edit.tier_id, edit.min_points, edit.bonus_points, default)
        for i, gone in enumerate(delete_tier_ids):
            if gone not in levels:
                raise invalid(f"delete_tier_ids[{i}]", f"unknown tier {gone!r}")
            if gone in delete_tier_ids[:i]:
                raise invalid(f"delete_tier_ids[{i}]", f"tier {gone!r} is named twice")
        if levels and not set(levels) - set(delete_tier_ids):
            raise invalid("delete_tier_ids", "leaves no tier a customer can hold")
        if programme is not None and programme_paths:
            current = patched_programme(current, programme, program_mask(programme_paths))
        return await self._previews.preview_change(
            merchant_id, current, Ladder(levels.values()), checked, delete_tier_ids, now or datetime.now(UTC), samples
        )
