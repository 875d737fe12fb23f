"""Merchants for chaos tests, provisioned straight in their database: a default `basic` tier and a
`gold` tier each, named so that a tier shown for the wrong merchant is noticed."""

from __future__ import annotations

import uuid

import asyncpg

from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService
from tests.chaos.lookups import TierFacts
from tests.conftest import Database


async def merchants_with_tiers(db: Database, count: int) -> list[TierFacts]:
    """`count` merchants with `basic` (default, 0 points) and `gold`; the tiers lookups must return."""
    su = await asyncpg.connect(db.superuser_dsn, database=db.name)
    pool = await create_pool(db.app_dsn, min_size=1, max_size=2)
    expected = []
    try:
        tiers = TierService(PgUnitOfWork(pool))
        for i in range(count):
            merchant = uuid.uuid4()
            await su.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
            for tier_id, name, points in (("basic", f"Basic {i}", 0), ("gold", f"Gold {i}", 100 + i)):
                await tiers.create(merchant, tier_id, TierSpec(name=name, min_points=points, is_default=not points))
                expected.append(TierFacts(str(merchant), tier_id, name, points))
    finally:
        await pool.close()
        await su.close()
    return expected
