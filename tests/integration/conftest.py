"""Fixtures of the progression tests (points.recorded and the deadline scheduler) and of the
scheduled-change tests (a controllable clock at T0 and the ScheduledChanges service on it)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from campaign_service.adapters.postgres.scheduled import PgScheduledChanges
from campaign_service.domain.benefits import Benefits
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.scheduled import ScheduledChanges
from tests.integration.test_scheduled_changes import T0, Clock


@pytest.fixture
async def ladder_merchant(new_merchant: Any, tier_service: Any, app_pool: Any) -> Any:
    """A merchant with basic (0, default) < silver (1000) < gold (5000, bonus 500); optional programme."""

    async def make(**programme: Any) -> uuid.UUID:
        merchant: uuid.UUID = await new_merchant()
        await tier_service.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
        await tier_service.create(merchant, "silver", TierSpec(name="Silver", min_points=1000))
        await tier_service.create(
            merchant, "gold", TierSpec(name="Gold", min_points=5000, benefits=Benefits(bonus_points=500))
        )
        if programme:
            cols = ", ".join(programme)
            marks = ", ".join(f"${i + 2}" for i in range(len(programme)))
            async with app_pool.acquire() as conn, conn.transaction():  # as the service role, under RLS
                await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                await conn.execute(
                    f"INSERT INTO tier_programs (merchant_id, {cols}, version) VALUES ($1, {marks}, 2)",
                    merchant,
                    *programme.values(),
                )
        return merchant

    return make


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def dated(app_pool: Any, clock: Clock) -> ScheduledChanges:
    return ScheduledChanges(PgScheduledChanges(app_pool), clock=clock)
