"""Re-assessment jobs (issue 14): the queue (tier_change_jobs, migration 0030)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from campaign_service.adapters.postgres.tenant import PgUnitOfWork


async def test_enqueue_inside_a_unit_of_work_is_idempotent_per_change(app_pool: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    change = uuid.uuid4()
    uow = PgUnitOfWork(app_pool)
    async with uow(merchant) as work:
        job = await work.tier_change_jobs.enqueue(change, mode="full", config_version=3)
        again = await work.tier_change_jobs.enqueue(change, mode="upgrades_only", config_version=4)
    async with uow(merchant) as work:
        assert await work.tier_change_jobs.enqueue(change, mode="next_period", config_version=5) == job
        stored = await work.tier_change_jobs.get(job)
    assert again == job
    assert stored is not None
    assert (stored.mode, stored.state, stored.config_version) == ("full", "queued", 3)
    assert await app_pool.fetchval("SELECT count(*) FROM tier_change_jobs") == 0  # RLS: no merchant, no rows


async def test_an_enqueue_rolled_back_with_its_change_leaves_no_job(app_pool: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    uow = PgUnitOfWork(app_pool)
    with pytest.raises(RuntimeError):
        async with uow(merchant) as work:
            job = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
            raise RuntimeError("the change failed")
    async with uow(merchant) as work:
        assert await work.tier_change_jobs.get(job) is None


async def test_enqueue_without_a_merchant_is_refused(app_pool: Any) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_pool.fetchval("SELECT campaign_enqueue_tier_change_job($1, 'full', 1, now())", uuid.uuid4())
