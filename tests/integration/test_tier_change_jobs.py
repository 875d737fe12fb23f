"""Re-assessment jobs (issue 14): the queue (tier_change_jobs, migration 0030).

On a database of this module's own (tests/module_database.py): the main session's service
processes run the re-assessment jobs of the shared database and would claim these tests' chunks."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import (
    Configuration,
    PgTierChangeEngine,
    _setup,
    apply_chunk,
    preview_range,
)
from campaign_service.domain.errors import FailedPrecondition, NotFound
from campaign_service.domain.tier_changes import APPLY_MODES, ApplyMode, Matrix
from campaign_service.events.tier_change_jobs import JobRunnerSettings, TierChangeJobRunner
from campaign_service.service.errors import Unavailable
from tests.conftest import start_service
from tests.module_database import (  # noqa: F401  (fixtures: this module's own database)
    module_app_pool,
    module_database,
    module_owner_conn,
    module_relay_pool,
    module_superuser_conn,
    module_tier_service,
)


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


# ------------------------------------------------------------------------------------------
# The engine: preview and apply on a generated population.

STAMP = datetime(2027, 6, 15, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Customer:
    tier: int  # index into the ladder
    points: tuple[tuple[int, int], ...]  # (days before STAMP, points)
    floor: int | None = None


async def seed(
    app_pool: Any, merchant: uuid.UUID, ladder: Sequence[int], customers: Sequence[Customer], window: str = "lifetime"
) -> list[uuid.UUID]:
    """Tiers t0..tn with the given min_points (t0 default), a programme, and customers holding
    tiers with daily points; as the service role (RLS applies). The customer ids in order."""
    ids = [uuid.uuid4() for _ in customers]
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        for i, mp in enumerate(ladder):
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default, benefits)"
                " VALUES ($1, $2, $2, $3, $4, jsonb_build_object('bonus_points', $5::int))",
                merchant, f"t{i}", mp, i == 0, 10 * i,
            )  # fmt: skip
        if window != "lifetime":
            await conn.execute(
                "INSERT INTO tier_programs (merchant_id, window_kind, downgrade_policy, version)"
                " VALUES ($1, $2, 'to_qualified', 3)",
                merchant,
                window,
            )
        # one statement each (the history triggers are per statement)
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source, floor_tier_id, held_tiers)"
            " SELECT $1, c, t, 'customer.created', f, ARRAY[t] FROM unnest($2::uuid[], $3::text[], $4::text[]) AS x(c, t, f)",
            merchant,
            ids,
            [f"t{c.tier}" for c in customers],
            [None if c.floor is None else f"t{c.floor}" for c in customers],
        )
        points: dict[tuple[uuid.UUID, date], int] = {}
        for cid, c in zip(ids, customers, strict=True):
            for d, p in c.points:
                key = (cid, (STAMP - timedelta(days=d)).date())
                points[key] = points.get(key, 0) + p
        await conn.execute(
            "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points)"
            " SELECT $1, c, d, p FROM unnest($2::uuid[], $3::date[], $4::bigint[]) AS x(c, d, p)",
            merchant,
            [k[0] for k in points],
            [k[1] for k in points],
            list(points.values()),
        )
    return ids


async def set_min_points(app_pool: Any, merchant: uuid.UUID, new: Sequence[int]) -> None:
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        for i, mp in enumerate(new):
            await conn.execute(
                "UPDATE vip_tiers SET min_points = $3 WHERE merchant_id = $1 AND tier_id = $2", merchant, f"t{i}", mp
            )


async def run_job(
    engine: PgTierChangeEngine, app_pool: Any, merchant: uuid.UUID, mode: ApplyMode, chunk: int = 7
) -> uuid.UUID:
    async with PgUnitOfWork(app_pool)(merchant) as work:
        job = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode=mode, config_version=1)
    for _ in range(10_000):
        result = await engine.run_chunk(merchant, job, STAMP, chunk)
        if result.finished:
            return job
    raise AssertionError("the job did not finish")


async def moves_of_job(superuser_conn: Any, merchant: uuid.UUID, job: uuid.UUID) -> Counter[tuple[str, str, str]]:
    rows = await superuser_conn.fetch(
        "SELECT from_tier_id, tier_id, direction, reason FROM customer_tier_history"
        " WHERE merchant_id = $1 AND cause_event_id = $2",
        merchant,
        job,
    )
    assert all(r["reason"] == "program_change" for r in rows)
    events = await superuser_conn.fetch(
        "SELECT payload FROM outbox_events WHERE merchant_id = $1 AND payload->>'job_id' = $2", merchant, str(job)
    )
    assert len(events) == len(rows)  # one event per move
    assert all(e["payload"]["reason"] == "program_change" for e in events)
    return Counter((r["from_tier_id"], r["tier_id"], r["direction"]) for r in rows)


def preview_moves(matrix: Matrix) -> Counter[tuple[str, str, str]]:
    return Counter(
        {(c.from_tier, c.to_tier, c.direction): c.customers for c in matrix.cells.values() if c.direction is not None}
    )


customers_st = st.lists(
    st.builds(
        Customer,
        tier=st.integers(0, 3),
        points=st.lists(st.tuples(st.integers(0, 800), st.integers(-50, 600)), max_size=4).map(tuple),
        floor=st.none() | st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)
ladder_st = st.lists(st.integers(1, 1500), min_size=3, max_size=3).map(lambda xs: [0, *sorted(xs)])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    customers=customers_st,
    before=ladder_st,
    after=ladder_st,
    mode=st.sampled_from(APPLY_MODES),
    window=st.sampled_from(["lifetime", "calendar_year", "rolling_months"]),
)
async def test_preview_counts_equal_what_apply_then_does_in_every_mode(
    app_pool: Any, new_merchant: Any, superuser_conn: Any,
    customers: list[Customer], before: list[int], after: list[int], mode: ApplyMode, window: str,
) -> None:  # fmt: skip
    if window == "rolling_months":
        window = "calendar_year"  # (a rolling window needs window_months; the year covers a bounded window)
    merchant = await new_merchant()
    ids = await seed(app_pool, merchant, before, customers, window)
    tiers_before = {
        r["customer_id"]: r["tier_id"]
        for r in await superuser_conn.fetch(
            "SELECT customer_id, tier_id FROM customer_tiers WHERE merchant_id = $1", merchant
        )
    }
    await set_min_points(app_pool, merchant, after)
    engine = PgTierChangeEngine(app_pool)
    programme, ladder = await engine.setup(merchant)
    matrix = await engine.preview(merchant, Configuration(programme, ladder, mode), STAMP, samples=3, chunk=5)
    assert matrix.customers == len(ids)
    job = await run_job(engine, app_pool, merchant, mode)
    done = await moves_of_job(superuser_conn, merchant, job)
    assert preview_moves(matrix) == done
    stored = await engine.get(merchant, job)
    assert stored is not None
    assert (stored.state, stored.customers_done, stored.moved) == ("done", len(ids), sum(done.values()))
    if mode == "upgrades_only":
        assert all(d == "up" for _, _, d in done)
    if mode == "next_period":
        assert not done
    # each sample is a customer of its cell
    for cell in matrix.cells.values():
        assert all(tiers_before[s] == cell.from_tier for s in cell.samples)
        assert len(cell.samples) == min(3, cell.customers)


# ------------------------------------------------------------------------------------------
# The runner: replicas, lost chunks, kill -9.


async def population(app_pool: Any, new_merchant: Any, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """n customers on t0 with points 0..n-1 scaled so that about half reach t1 after the change."""
    merchant = await new_merchant()
    customers = [Customer(0, ((1, (i * 7919) % 2000),)) for i in range(n)]
    ids = await seed(app_pool, merchant, [0, 5000, 9000, 9500], customers)
    await set_min_points(app_pool, merchant, [0, 1000, 9000, 9500])
    return merchant, ids


async def assessed_once(superuser_conn: Any, merchant: uuid.UUID, job: uuid.UUID, expected: int) -> None:
    per_customer = await superuser_conn.fetch(
        "SELECT customer_id, count(*) AS n FROM customer_tier_history WHERE merchant_id = $1 AND cause_event_id = $2"
        " GROUP BY customer_id",
        merchant,
        job,
    )
    assert all(r["n"] == 1 for r in per_customer)
    assert len(per_customer) == expected
    events = await superuser_conn.fetchval(
        "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND payload->>'job_id' = $2", merchant, str(job)
    )
    assert events == expected
    row = await superuser_conn.fetchrow(
        "SELECT state, moved, customers_done, customers_total FROM tier_change_jobs WHERE job_id = $1", job
    )
    assert (row["state"], row["moved"]) == ("done", expected)
    assert row["customers_done"] == row["customers_total"]


async def test_two_replicas_never_run_the_same_chunk(app_pool: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant, ids = await population(app_pool, new_merchant, 300)
    preview = await PgTierChangeEngine(app_pool).preview(
        merchant, Configuration(*await PgTierChangeEngine(app_pool).setup(merchant), "full"), STAMP
    )
    async with PgUnitOfWork(app_pool)(merchant) as work:
        job = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
    runners = [
        TierChangeJobRunner(PgTierChangeEngine(app_pool), JobRunnerSettings(chunk_size=10), clock=lambda: STAMP)
        for _ in range(3)
    ]
    chunks = await asyncio.gather(*(r.run_job(merchant, job) for r in runners))
    assert sum(chunks) == len(ids) // 10 + 1  # every chunk ran once, whoever ran it
    assert preview.moved() > 0
    await assessed_once(superuser_conn, merchant, job, preview.moved())


async def test_a_chunk_lost_mid_transaction_is_run_again_once(
    app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant, _ = await population(app_pool, new_merchant, 100)
    engine = PgTierChangeEngine(app_pool)
    expected = (await engine.preview(merchant, Configuration(*await engine.setup(merchant), "full"), STAMP)).moved()
    async with PgUnitOfWork(app_pool)(merchant) as work:
        job = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
    await engine.run_chunk(merchant, job, STAMP, 30)
    with pytest.raises(Unavailable):  # the chunk's written rows, then the connection dies
        async with engine._scoped(merchant, readonly=False) as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            cursor = await conn.fetchval("SELECT cursor FROM tier_change_jobs WHERE job_id = $1 FOR UPDATE", job)
            config = Configuration(*await _setup(conn, merchant), "full")
            await apply_chunk(conn, merchant, config, STAMP, job, after=cursor, chunk=30)
            await superuser_conn.execute("SELECT pg_terminate_backend($1)", pid)
            await conn.execute("SELECT 1")
    runner = TierChangeJobRunner(engine, JobRunnerSettings(chunk_size=30), clock=lambda: STAMP)
    assert await runner.run_once() >= 1
    await assessed_once(superuser_conn, merchant, job, expected)


async def test_kill_9_of_the_service_mid_job_then_restart_completes_each_customer_once(
    database: Any, app_pool: Any, new_merchant: Any, superuser_conn: Any, tmp_path: Path
) -> None:
    merchant, _ = await population(app_pool, new_merchant, 6000)
    engine = PgTierChangeEngine(app_pool)
    expected = (await engine.preview(merchant, Configuration(*await engine.setup(merchant), "full"), STAMP)).moved()
    async with PgUnitOfWork(app_pool)(merchant) as work:
        job = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
    env = {"CAMPAIGN_TIER_CHANGE_JOBS_CHUNK_SIZE": "50", "CAMPAIGN_TIER_CHANGE_JOBS_INTERVAL_S": "0.2"}
    service = start_service(database, tmp_path, extra_env=env)
    try:
        for _ in range(600):
            done = await superuser_conn.fetchval("SELECT customers_done FROM tier_change_jobs WHERE job_id = $1", job)
            if done > 0:
                break
            await asyncio.sleep(0.05)
        service.stop(signal.SIGKILL)
    finally:
        if service.proc.poll() is None:
            service.stop(signal.SIGKILL)
    row = await superuser_conn.fetchrow("SELECT state, customers_done FROM tier_change_jobs WHERE job_id = $1", job)
    assert row["state"] == "running", "the kill came too late to be mid-job"
    assert 0 < row["customers_done"] < 6000
    service = start_service(database, tmp_path / "again", extra_env=env)
    try:
        for _ in range(1200):
            if await superuser_conn.fetchval("SELECT state FROM tier_change_jobs WHERE job_id = $1", job) == "done":
                break
            await asyncio.sleep(0.1)
    finally:
        service.stop()
    await assessed_once(superuser_conn, merchant, job, expected)


async def test_a_preview_for_merchant_a_never_counts_merchant_b(
    app_pool: Any, new_merchant: Any
) -> None:
    a, ids_a = await population(app_pool, new_merchant, 20)
    b, ids_b = await population(app_pool, new_merchant, 30)
    engine = PgTierChangeEngine(app_pool)
    config = Configuration(*await engine.setup(a), "full")
    matrix = await engine.preview(a, config, STAMP, samples=100)
    assert matrix.customers == 20
    assert {s for c in matrix.cells.values() for s in c.samples} <= set(ids_a)
    # even asked for B's id with A's transaction, RLS answers nothing
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(a))
        assert (await preview_range(conn, b, config, STAMP)).customers == 0
    assert ids_b


@pytest.mark.parametrize("mode", APPLY_MODES)
async def test_deleting_a_held_tier_with_a_mode_moves_its_holders_exactly_once(
    app_pool: Any, new_merchant: Any, superuser_conn: Any, tier_service: Any, mode: ApplyMode
) -> None:
    merchant = await new_merchant()
    # t0 0 < t1 100 < t2 1000; holders of t2 with 50 (reach t0 only) and 500 points (reach t1)
    customers = [Customer(2, ((1, 50),)), Customer(2, ((1, 500),)), Customer(1, ((1, 500),)), Customer(0, ())]
    low, mid, keeper, base = await seed(app_pool, merchant, [0, 100, 1000], customers)
    with pytest.raises(FailedPrecondition):
        await tier_service.delete(merchant, "t2")
    job = await tier_service.delete(merchant, "t2", mode=mode)
    assert job is not None
    engine = PgTierChangeEngine(app_pool)
    runner = TierChangeJobRunner(engine, JobRunnerSettings(chunk_size=2))
    await runner.run_job(merchant, job)
    history = await superuser_conn.fetch(
        "SELECT customer_id, from_tier_id, tier_id, direction FROM customer_tier_history"
        " WHERE merchant_id = $1 AND cause_event_id = $2",
        merchant,
        job,
    )
    moved = {r["customer_id"]: (r["from_tier_id"], r["tier_id"], r["direction"]) for r in history}
    assert len(history) == len(moved) == 2  # the two holders, once each; nobody else
    # full: the tier their points reach; otherwise nobody falls below the tier under the deleted one
    assert moved[low] == ("t2", "t0" if mode == "full" else "t1", "down")
    assert moved[mid] == ("t2", "t1", "down")
    assert keeper not in moved
    assert base not in moved
    stored = await engine.get(merchant, job)
    assert stored is not None
    assert stored.state == "done"
    assert await superuser_conn.fetchval(
        "SELECT count(*) FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 't2'", merchant
    ) == 0


async def test_a_threshold_edit_starts_a_job_in_the_mode_asked_and_get_job_reports_it(
    app_pool: Any, new_merchant: Any, superuser_conn: Any, tier_service: Any
) -> None:
    merchant = await new_merchant()
    # t0 0 < t1 1000; customers with 600 points on t0, and one on t1 with 1200
    up, stays, high = await seed(
        app_pool, merchant, [0, 1000], [Customer(0, ((1, 600),)), Customer(0, ((1, 100),)), Customer(1, ((1, 1200),))]
    )
    spec = (await tier_service.get_tier(merchant, "t1")).spec
    result = await tier_service.update(merchant, "t1", replace(spec, min_points=500), ["min_points"])
    assert result.job_id is not None
    unchanged = await tier_service.update(merchant, "t1", replace(spec, min_points=500), ["min_points"])
    assert unchanged.job_id is None  # nothing changed, no job
    assert (await tier_service.job(merchant, result.job_id)).state == "queued"
    await TierChangeJobRunner(PgTierChangeEngine(app_pool), clock=lambda: STAMP).run_job(merchant, result.job_id)
    job = await tier_service.job(merchant, result.job_id)
    assert (job.state, job.mode, job.customers_total, job.customers_done, job.moved) == (
        "done", "upgrades_only", 3, 3, 1,
    )  # fmt: skip
    assert await superuser_conn.fetchval(
        "SELECT tier_id FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, up
    ) == "t1"
    with pytest.raises(NotFound):
        await tier_service.job(await new_merchant(), result.job_id)  # another merchant's job
    assert stays
    assert high


@pytest.mark.parametrize("mode", APPLY_MODES)
async def test_each_mode_moves_whom_it_says_on_a_fixed_population(
    app_pool: Any, new_merchant: Any, superuser_conn: Any, mode: ApplyMode
) -> None:
    """t1 drops 1000 -> 500 (a t0 customer with 600 would rise), t2 rises 2000 -> 3000 (a t2
    customer with 2500 would fall): upgrades_only moves only the first, full both, next_period
    nobody (the deadline scheduler applies the change later)."""
    merchant = await new_merchant()
    riser, faller, _ = await seed(
        app_pool, merchant, [0, 1000, 2000],
        [Customer(0, ((1, 600),)), Customer(2, ((1, 2500),)), Customer(1, ((1, 1200),))],
    )  # fmt: skip
    await set_min_points(app_pool, merchant, [0, 500, 3000])
    job = await run_job(PgTierChangeEngine(app_pool), app_pool, merchant, mode, chunk=2)
    done = await moves_of_job(superuser_conn, merchant, job)
    expected = {
        "upgrades_only": Counter({("t0", "t1", "up"): 1}),
        "full": Counter({("t0", "t1", "up"): 1, ("t2", "t1", "down"): 1}),
        "next_period": Counter(),
    }[mode]
    assert done == expected
    assert riser
    assert faller
