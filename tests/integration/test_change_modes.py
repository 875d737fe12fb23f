"""Apply modes of changes made now and scheduled, on the real PostgreSQL (issue 14 gaps):
UpdateTierProgram made now starts a re-assessment job in the request's `apply_mode`; scheduled
changes keep the request's `apply_mode` and use it at their time; a scheduled delete of a held
tier with a mode moves its holders at its time (once); `apply_mode` is checked in one place and
named in the error of every RPC that takes it. The RPCs are called on the servicer itself (the
request messages, the real use cases and database, no network)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.adapters.postgres.scheduled import PgScheduledChanges
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import PgTierChangeEngine
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.servicer import CampaignServicer
from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.tier_changes import TierChangeJob, apply_mode, optional_apply_mode
from campaign_service.service.progression_api import ProgressionApi
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.tier_changes import TierChangePreviewer
from campaign_service.service.tiers import TierService
from tests.integration.test_scheduled_changes import Clock

T0 = datetime(2032, 5, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
NO_CONTEXT = cast(Any, None)



@pytest.fixture
def servicer(app_pool: Any, dated: ScheduledChanges) -> CampaignServicer:
    return CampaignServicer(
        TierService(PgUnitOfWork(app_pool)),
        cast(Any, None),  # reads: not called here
        ProgressionApi(PgProgressionApi(app_pool)),
        TierChangePreviewer(PgTierChangeEngine(app_pool)),
        dated,
    )


async def seed(
    app_pool: Any,
    merchant: uuid.UUID,
    tiers: Sequence[tuple[str, int]],
    customers: Sequence[tuple[str, int, datetime]],
) -> list[uuid.UUID]:
    """Tiers (id, min_points; the first the default) and customers (tier held, points earned on
    the day of the time given), as the service role (RLS applies). The customer ids in order."""
    ids = [uuid.uuid4() for _ in customers]
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        for i, (tier_id, min_points) in enumerate(tiers):
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default) VALUES ($1, $2, $2, $3, $4)",
                merchant,
                tier_id,
                min_points,
                i == 0,
            )
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source, held_tiers)"
            " SELECT $1, c, t, 'customer.created', ARRAY[t] FROM unnest($2::uuid[], $3::text[]) AS x(c, t)",
            merchant,
            ids,
            [c[0] for c in customers],
        )
        await conn.execute(
            "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points)"
            " SELECT $1, c, d, p FROM unnest($2::uuid[], $3::date[], $4::bigint[]) AS x(c, d, p)",
            merchant,
            ids,
            [c[2].date() for c in customers],
            [c[1] for c in customers],
        )
    return ids


async def tiers_of(superuser_conn: Any, merchant: uuid.UUID, ids: Sequence[uuid.UUID]) -> list[str]:
    rows = await superuser_conn.fetch(
        "SELECT customer_id, tier_id FROM customer_tiers WHERE merchant_id = $1", merchant
    )
    held = {r["customer_id"]: r["tier_id"] for r in rows}
    return [held[c] for c in ids]


async def jobs_of(superuser_conn: Any, merchant: uuid.UUID) -> list[Any]:
    return list(
        await superuser_conn.fetch(
            "SELECT job_id, change_id, mode, config_version, state FROM tier_change_jobs WHERE merchant_id = $1"
            " ORDER BY created_at, job_id",
            merchant,
        )
    )


async def head(superuser_conn: Any, merchant: uuid.UUID) -> int:
    return int(
        await superuser_conn.fetchval("SELECT version FROM tier_config_heads WHERE merchant_id = $1", merchant) or 0
    )


async def run_job(app_pool: Any, merchant: uuid.UUID, job_id: uuid.UUID, stamp: datetime) -> TierChangeJob:
    """Runs the job to its end (a service's runner on the shared database may take chunks too)."""
    engine = PgTierChangeEngine(app_pool)
    for _ in range(300):
        result = await engine.run_chunk(merchant, job_id, stamp, 1000)
        job = await engine.get(merchant, job_id)
        assert job is not None
        if job.state in ("done", "failed"):
            return job
        if result.job is None:
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def timestamp(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def program_request(merchant: uuid.UUID, paths: list[str], mode: str, **values: Any) -> pb.UpdateTierProgramRequest:
    return pb.UpdateTierProgramRequest(
        merchant_id=str(merchant),
        program=pb.TierProgram(**values),
        update_mask=FieldMask(paths=paths),
        apply_mode=mode,
    )


# -- (a) UpdateTierProgram made now ----------------------------------------------------------------


@pytest.mark.parametrize(("mode", "stored", "expected"), [("full", "full", "basic"), ("", "upgrades_only", "gold")])
async def test_an_immediate_programme_change_of_qualification_starts_a_job_in_the_requested_mode(
    servicer: CampaignServicer,
    app_pool: Any,
    new_merchant: Any,
    superuser_conn: Any,
    mode: str,
    stored: str,
    expected: str,
) -> None:
    merchant = await new_merchant()
    now = datetime.now(UTC)
    # `old` earned its gold points 400 days ago: a calendar-year window no longer counts them.
    old, fresh = await seed(
        app_pool,
        merchant,
        [("basic", 0), ("silver", 100), ("gold", 1000)],
        [("gold", 1500, now - timedelta(days=400)), ("silver", 150, now)],
    )
    answer = await servicer.UpdateTierProgram(
        program_request(merchant, ["window"], mode, window="calendar_year"), NO_CONTEXT
    )
    assert list(answer.updated_fields) == ["window"]
    [job] = await jobs_of(superuser_conn, merchant)
    assert answer.job_id == str(job["job_id"])
    assert (job["mode"], job["config_version"]) == (stored, await head(superuser_conn, merchant))
    shown = await servicer.GetTierChangeJob(
        pb.GetTierChangeJobRequest(merchant_id=str(merchant), job_id=answer.job_id), NO_CONTEXT
    )
    assert shown.mode == stored

    done = await run_job(app_pool, merchant, job["job_id"], now)
    assert (done.state, done.customers_done) == ("done", 2)
    assert await tiers_of(superuser_conn, merchant, [old, fresh]) == [expected, "silver"]
    if mode == "full":
        reason, cause = await superuser_conn.fetchrow(
            "SELECT reason, cause_event_id FROM customer_tier_history WHERE merchant_id = $1 AND customer_id = $2"
            " ORDER BY id DESC LIMIT 1",
            merchant,
            old,
        )
        assert (reason, cause) == ("program_change", job["job_id"])


async def test_a_programme_change_that_cannot_move_anyone_starts_no_job(
    servicer: CampaignServicer, app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    await seed(app_pool, merchant, [("basic", 0), ("gold", 1000)], [("gold", 1500, datetime.now(UTC))])
    answer = await servicer.UpdateTierProgram(
        program_request(merchant, ["entry_bonus"], "full", entry_bonus="every_promotion"), NO_CONTEXT
    )
    assert (list(answer.updated_fields), answer.job_id) == (["entry_bonus"], "")
    assert await jobs_of(superuser_conn, merchant) == []
    # No customer: no job either.
    empty = await new_merchant()
    await seed(app_pool, empty, [("basic", 0)], [])
    answer = await servicer.UpdateTierProgram(
        program_request(empty, ["window"], "full", window="calendar_year"), NO_CONTEXT
    )
    assert (list(answer.updated_fields), answer.job_id) == (["window"], "")
    assert await jobs_of(superuser_conn, empty) == []


# -- (b) scheduled changes keep the request's apply_mode -------------------------------------------


async def test_scheduled_changes_keep_the_requests_apply_mode_and_use_it_at_their_time(
    servicer: CampaignServicer,
    dated: ScheduledChanges,
    app_pool: Any,
    new_merchant: Any,
    superuser_conn: Any,
    clock: Clock,
) -> None:
    merchant = await new_merchant()
    [holder] = await seed(app_pool, merchant, [("basic", 0), ("silver", 100), ("gold", 1000)], [("gold", 1500, T0)])
    at = timestamp(T0 + HOUR)
    tier = await servicer.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant),
            tier_id="gold",
            tier=pb.VIPTier(min_points=2000),
            update_mask=FieldMask(paths=["min_points"]),
            apply_mode="full",
            effective_at=at,
        ),
        NO_CONTEXT,
    )
    created = await servicer.CreateVIPTier(
        pb.CreateVIPTierRequest(
            merchant_id=str(merchant),
            tier=pb.VIPTier(tier_id="platinum", name="Platinum", min_points=5000),
            apply_mode="next_period",
            effective_at=at,
        ),
        NO_CONTEXT,
    )
    program = await servicer.UpdateTierProgram(
        pb.UpdateTierProgramRequest(
            merchant_id=str(merchant),
            program=pb.TierProgram(grace_days=3),
            update_mask=FieldMask(paths=["grace_days"]),
            apply_mode="full",
            effective_at=at,
        ),
        NO_CONTEXT,
    )
    assert (tier.scheduled_change.mode, program.scheduled_change.mode, program.job_id) == ("full", "full", "")
    listed = await servicer.ListScheduledChanges(pb.ListScheduledChangesRequest(merchant_id=str(merchant)), NO_CONTEXT)
    assert {c.tier_id or "_program": c.mode for c in listed.changes} == {
        "gold": "full",
        "platinum": "next_period",
        "_program": "full",
    }
    assert created.scheduled_change_id

    clock.now = T0 + HOUR
    assert await dated.activate_merchant(merchant) == 3
    jobs = await jobs_of(superuser_conn, merchant)
    assert {(str(j["change_id"]), j["mode"]) for j in jobs} == {
        (tier.scheduled_change.change_id, "full"),
        (created.scheduled_change_id, "next_period"),
        (program.scheduled_change.change_id, "full"),
    }
    # The gold change's job in `full`: the holder's 1,500 points no longer keep gold (2,000).
    gold_job = next(j for j in jobs if str(j["change_id"]) == tier.scheduled_change.change_id)
    assert (await run_job(app_pool, merchant, gold_job["job_id"], T0 + HOUR)).moved == 1
    assert await tiers_of(superuser_conn, merchant, [holder]) == ["silver"]


# -- (c) a scheduled delete of a held tier -----------------------------------------------------------


LADDER = [("basic", 0), ("bronze", 50), ("silver", 100), ("gold", 1000)]


@pytest.mark.parametrize(
    ("mode", "low_goes_to"), [("upgrades_only", "bronze"), ("full", "basic"), ("next_period", "bronze")]
)
async def test_a_scheduled_delete_of_a_held_tier_with_a_mode_moves_its_holders_once_at_its_time(
    servicer: CampaignServicer,
    dated: ScheduledChanges,
    app_pool: Any,
    new_merchant: Any,
    superuser_conn: Any,
    clock: Clock,
    mode: str,
    low_goes_to: str,
) -> None:
    merchant = await new_merchant()
    low, high, other = await seed(
        app_pool, merchant, LADDER, [("silver", 10, T0), ("silver", 1200, T0), ("bronze", 60, T0)]
    )
    at = timestamp(T0 + HOUR)
    answer = await servicer.DeleteVIPTier(
        pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="silver", apply_mode=mode, effective_at=at),
        NO_CONTEXT,
    )
    assert answer.scheduled_change.mode == mode

    clock.now = T0 + HOUR - timedelta(milliseconds=1)
    assert await dated.activate_merchant(merchant) == 0
    assert await tiers_of(superuser_conn, merchant, [low, high, other]) == ["silver", "silver", "bronze"]

    clock.now = T0 + HOUR
    assert await dated.activate_merchant(merchant) == 1
    state, error = await superuser_conn.fetchrow(
        "SELECT state, error FROM tier_scheduled_changes WHERE merchant_id = $1", merchant
    )
    assert (state, error) == ("applied", None)
    assert (
        await superuser_conn.fetchval(
            "SELECT count(*) FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'silver'", merchant
        )
        == 0
    )
    assert await tiers_of(superuser_conn, merchant, [low, high, other]) == [low_goes_to, "gold", "bronze"]
    [job] = await jobs_of(superuser_conn, merchant)
    assert (str(job["change_id"]), job["mode"]) == (answer.scheduled_change.change_id, mode)

    # The job then re-assesses everybody: nobody moves twice (one history row and event each).
    await run_job(app_pool, merchant, job["job_id"], T0 + HOUR)
    moves = await superuser_conn.fetch(
        "SELECT customer_id, from_tier_id, cause_event_id, assigned_at FROM customer_tier_history"
        " WHERE merchant_id = $1 AND reason = 'program_change'",
        merchant,
    )
    assert sorted((m["customer_id"], m["from_tier_id"]) for m in moves) == sorted([(low, "silver"), (high, "silver")])
    assert {(m["cause_event_id"], m["assigned_at"]) for m in moves} == {(job["job_id"], T0 + HOUR)}
    events = await superuser_conn.fetch(
        "SELECT payload FROM outbox_events WHERE merchant_id = $1 AND topic = 'vip_tier.assigned'", merchant
    )
    assert sorted(e["payload"]["customer_id"] for e in events) == sorted([str(low), str(high)])
    assert {e["payload"]["job_id"] for e in events} == {str(job["job_id"])}


async def test_a_scheduled_delete_of_a_held_tier_without_a_mode_fails_at_its_time_and_moves_nobody(
    servicer: CampaignServicer,
    dated: ScheduledChanges,
    app_pool: Any,
    new_merchant: Any,
    superuser_conn: Any,
    clock: Clock,
) -> None:
    merchant = await new_merchant()
    [holder] = await seed(app_pool, merchant, LADDER, [("silver", 10, T0)])
    at = timestamp(T0 + HOUR)
    answer = await servicer.DeleteVIPTier(
        pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="silver", effective_at=at), NO_CONTEXT
    )
    assert answer.scheduled_change.mode == ""
    clock.now = T0 + HOUR
    assert await dated.activate_merchant(merchant) == 1
    state, error = await superuser_conn.fetchrow(
        "SELECT state, error FROM tier_scheduled_changes WHERE merchant_id = $1", merchant
    )
    assert state == "failed"
    assert "customers hold tier 'silver'" in error
    assert await tiers_of(superuser_conn, merchant, [holder]) == ["silver"]
    assert await jobs_of(superuser_conn, merchant) == []


# -- (g) apply_mode: one check, named the same in every RPC --------------------------------------------


def test_the_one_check_of_an_apply_mode() -> None:
    assert apply_mode("") == apply_mode(None) == "upgrades_only"
    assert [apply_mode(m) for m in ("upgrades_only", "full", "next_period")] == ["upgrades_only", "full", "next_period"]
    assert optional_apply_mode("") is None
    assert optional_apply_mode("full") == "full"
    for bad in ("sometimes", "FULL", " full"):
        with pytest.raises(InvalidArgument) as caught:
            optional_apply_mode(bad)
        assert [v.field for v in caught.value.violations] == ["apply_mode"]


def _bad_mode_requests(merchant: uuid.UUID) -> list[tuple[str, Any]]:
    at = timestamp(T0 + HOUR)
    m = str(merchant)
    gold = pb.VIPTier(min_points=2000)
    mask = FieldMask(paths=["min_points"])
    new = pb.VIPTier(tier_id="platinum", name="Platinum", min_points=5000)
    return [
        ("CreateVIPTier", pb.CreateVIPTierRequest(merchant_id=m, tier=new, apply_mode="x")),
        ("CreateVIPTier", pb.CreateVIPTierRequest(merchant_id=m, tier=new, apply_mode="x", effective_at=at)),
        (
            "UpdateVIPTier",
            pb.UpdateVIPTierRequest(merchant_id=m, tier_id="gold", tier=gold, update_mask=mask, apply_mode="x"),
        ),
        (
            "UpdateVIPTier",
            pb.UpdateVIPTierRequest(
                merchant_id=m, tier_id="gold", tier=gold, update_mask=mask, apply_mode="x", effective_at=at
            ),
        ),
        ("DeleteVIPTier", pb.DeleteVIPTierRequest(merchant_id=m, tier_id="silver", apply_mode="x")),
        ("DeleteVIPTier", pb.DeleteVIPTierRequest(merchant_id=m, tier_id="silver", apply_mode="x", effective_at=at)),
        ("UpdateTierProgram", program_request(merchant, ["window"], "x", window="calendar_year")),
        (
            "UpdateTierProgram",
            pb.UpdateTierProgramRequest(
                merchant_id=m,
                program=pb.TierProgram(window="calendar_year"),
                update_mask=FieldMask(paths=["window"]),
                apply_mode="x",
                effective_at=at,
            ),
        ),
        ("PreviewTierChange", pb.PreviewTierChangeRequest(merchant_id=m, apply_mode="x")),
    ]


@pytest.mark.parametrize("case", range(9))
async def test_a_bad_apply_mode_is_refused_naming_apply_mode_by_every_rpc_and_stores_nothing(
    servicer: CampaignServicer, app_pool: Any, new_merchant: Any, superuser_conn: Any, case: int
) -> None:
    merchant = await new_merchant()
    await seed(app_pool, merchant, LADDER, [("silver", 10, T0)])
    before = await head(superuser_conn, merchant)
    method, request = _bad_mode_requests(merchant)[case]
    with pytest.raises(InvalidArgument) as caught:
        await getattr(servicer, method)(request, NO_CONTEXT)
    assert [v.field for v in caught.value.violations] == ["apply_mode"]
    assert await head(superuser_conn, merchant) == before
    assert await jobs_of(superuser_conn, merchant) == []
    assert (
        await superuser_conn.fetchval("SELECT count(*) FROM tier_scheduled_changes WHERE merchant_id = $1", merchant)
        == 0
    )


# -- (e) preview with several deleted tiers --------------------------------------------------------------

FIVE = [("basic", 0), ("bronze", 50), ("silver", 100), ("gold", 1000), ("platinum", 5000)]


@pytest.mark.parametrize("mode", ["upgrades_only", "full", "next_period"])
async def test_a_preview_deleting_several_tiers_equals_deleting_them_one_after_the_other(
    app_pool: Any, new_merchant: Any, superuser_conn: Any, mode: str
) -> None:
    merchant = await new_merchant()
    now = datetime.now(UTC)
    holders = [("gold", 10), ("gold", 60), ("gold", 2000), ("silver", 10), ("silver", 70), ("silver", 6000)]
    others = [("platinum", 10), ("bronze", 0), ("basic", 900)]
    ids = await seed(app_pool, merchant, FIVE, [(t, p, now) for t, p in holders + others])
    previewer = TierChangePreviewer(PgTierChangeEngine(app_pool))
    matrix = await previewer.preview(merchant, tiers=[], delete_tier_ids=["silver", "gold"], mode=mode, samples=10)
    assert matrix.customers == len(ids)

    tiers = TierService(PgUnitOfWork(app_pool))
    assert await tiers.delete(merchant, "gold", mode=mode) is not None
    assert await tiers.delete(merchant, "silver", mode=mode) is not None
    after = await tiers_of(superuser_conn, merchant, ids)
    # The holders of the deleted tiers: the preview's from -> to is where the two deletes took them.
    moved = {(t, a) for (t, _), a in zip(holders, after[: len(holders)], strict=True)}
    previewed = {key for key, cell in matrix.cells.items() if key[0] in ("silver", "gold") and cell.customers}
    assert previewed == moved
    for (t, _), a, cid in zip(holders, after[: len(holders)], ids[: len(holders)], strict=True):
        assert cid in matrix.cells[(t, a)].samples
    assert sum(c.customers for k, c in matrix.cells.items() if k[0] in ("silver", "gold")) == len(holders)
    # upgrades_only / next_period: nobody loses more than the deleted tiers (bronze stays the floor).
    if mode != "full":
        assert after[:2] == ["bronze", "bronze"]


async def test_a_preview_refuses_bad_deletions_naming_the_field(app_pool: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    await seed(app_pool, merchant, [("basic", 0), ("gold", 1000)], [])
    previewer = TierChangePreviewer(PgTierChangeEngine(app_pool))
    for delete, field in [
        (["gold", "nope"], "delete_tier_ids[1]"),
        (["gold", "gold"], "delete_tier_ids[1]"),
        (["gold", "basic"], "delete_tier_ids"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            await previewer.preview(merchant, tiers=[], delete_tier_ids=delete, mode="full")
        assert [v.field for v in caught.value.violations] == [field]


# -- (d) as_of in the past: the configurations kept -----------------------------------------------------


async def _tick() -> datetime:
    """Now, with the database's clock moved on past it (timestamps are milliseconds)."""
    await asyncio.sleep(0.005)
    at = datetime.now(UTC)
    await asyncio.sleep(0.005)
    return at


async def test_reads_as_of_a_past_time_answer_the_configuration_then(
    app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    from campaign_service.api.mapping import render_tier, render_tiers
    from campaign_service.domain.errors import NotFound
    from campaign_service.domain.progression import Programme
    from campaign_service.domain.tiers import TierSpec

    dated = ScheduledChanges(PgScheduledChanges(app_pool))  # the real clock
    tiers = TierService(PgUnitOfWork(app_pool))
    merchant = await new_merchant()
    before = await _tick()
    await tiers.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
    await tiers.create(
        merchant, "gold", TierSpec(name="Gold", min_points=1000, translations={"ar": "ذهب"}, discount_percentage=5)
    )
    first = await _tick()
    gold_then = await tiers.get_tier(merchant, "gold")
    await tiers.update(merchant, "gold", TierSpec(name="", min_points=1500), ["min_points"])
    second = await _tick()
    list_then = await tiers.list_tiers(merchant)
    await tiers.delete(merchant, "gold")
    third = await _tick()
    await ProgressionApi(PgProgressionApi(app_pool)).update_programme(
        merchant, Programme(window="calendar_year"), ["window"]
    )
    fourth = await _tick()

    assert (await dated.tiers_at(merchant, before)).tiers == []
    with pytest.raises(NotFound):
        await dated.tier_at(merchant, "gold", before)
    tier, _ = await dated.tier_at(merchant, "gold", first)
    assert render_tier(tier, "ar") == render_tier(gold_then, "ar")  # every field, translations too
    assert render_tiers((await dated.tiers_at(merchant, second)).tiers, "") == render_tiers(list_then, "")
    assert (await dated.tier_at(merchant, "gold", second))[0].spec.min_points == 1500
    with pytest.raises(NotFound):
        await dated.tier_at(merchant, "gold", third)
    assert [t.tier_id for t in (await dated.tiers_at(merchant, third)).tiers] == ["basic"]
    assert (await dated.programme_at(merchant, third)).programme.window == "lifetime"
    assert (await dated.programme_at(merchant, fourth)).programme.window == "calendar_year"
    assert (await dated.programme_at(merchant, before)).programme == Programme()
    # One kept version per configuration transaction.
    versions = await superuser_conn.fetch(
        "SELECT version FROM tier_config_versions WHERE merchant_id = $1 ORDER BY version", merchant
    )
    assert (
        [v["version"] for v in versions]
        == list(range(1, 6))
        == list(range(1, await head(superuser_conn, merchant) + 1))
    )


async def test_a_scheduled_change_is_kept_from_its_effective_time_even_when_activated_late(
    dated: ScheduledChanges, app_pool: Any, new_merchant: Any, clock: Clock
) -> None:
    from campaign_service.domain.progression import Programme
    from campaign_service.domain.tiers import TierSpec

    merchant = await new_merchant()
    await seed(app_pool, merchant, [("basic", 0), ("gold", 1000)], [])
    at = T0 + HOUR
    await dated.schedule_update(merchant, "gold", TierSpec(name="", min_points=2000), ["min_points"], at)
    await dated.schedule_programme(merchant, Programme(grace_days=9), ["grace_days"], at)
    clock.now = at + 30 * timedelta(minutes=1)
    # Past its time, not activated yet: a past read after it applies the pending change.
    assert (await dated.tier_at(merchant, "gold", at + timedelta(minutes=10)))[0].spec.min_points == 2000
    assert await dated.activate_merchant(merchant) == 2
    clock.now = at + 2 * HOUR
    assert (await dated.programme_at(merchant, at - timedelta(milliseconds=1))).programme.grace_days == 0
    assert (await dated.programme_at(merchant, at)).programme.grace_days == 9
    ms = timedelta(milliseconds=1)
    assert (await dated.tier_at(merchant, "gold", at - ms))[0].spec.min_points == 1000
    gold, _ = await dated.tier_at(merchant, "gold", at)
    assert (gold.spec.min_points, gold.updated_at) == (2000, at)


async def test_as_of_before_the_configurations_kept_is_refused_naming_the_time(
    dated: ScheduledChanges, app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    await seed(app_pool, merchant, [("basic", 0)], [])
    # As migration 0032 leaves a merchant configured before it: its first kept version is seeded.
    kept_from = await superuser_conn.fetchval(
        "UPDATE tier_config_versions SET seeded = true WHERE merchant_id = $1 RETURNING valid_from", merchant
    )
    with pytest.raises(InvalidArgument) as caught:
        await dated.tiers_at(merchant, kept_from - timedelta(milliseconds=1))
    assert [v.field for v in caught.value.violations] == ["as_of"]
    assert kept_from.isoformat() in caught.value.violations[0].description
    assert [t.tier_id for t in (await dated.tiers_at(merchant, kept_from)).tiers] == ["basic"]


# -- (h) one merchant's failing activation does not hold up the others ---------------------------------


async def test_a_merchant_whose_activation_raises_does_not_stop_the_others(
    app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    from campaign_service.domain.tiers import TierSpec

    clock = Clock(datetime.now(UTC))
    dated = ScheduledChanges(PgScheduledChanges(app_pool), clock=clock)
    broken, fine = await new_merchant(), await new_merchant()
    for merchant in (broken, fine):
        await seed(app_pool, merchant, [("basic", 0), ("gold", 1000)], [])
        await dated.schedule_update(
            merchant, "gold", TierSpec(name="", min_points=1500), ["min_points"], clock.now + HOUR
        )
    # The broken merchant's change is due first and cannot be read back (a payload no code wrote).
    at = clock.now + HOUR
    await superuser_conn.execute(
        'UPDATE tier_scheduled_changes SET payload = \'{"mask": ["min_points"]}\', effective_at = $2'
        " WHERE merchant_id = $1",
        broken,
        at - timedelta(milliseconds=1),
    )
    try:
        await dated.activate_due(at)
        states = await superuser_conn.fetch(
            "SELECT merchant_id, state FROM tier_scheduled_changes WHERE merchant_id = ANY($1::uuid[])",
            [broken, fine],
        )
        assert {r["merchant_id"]: r["state"] for r in states} == {broken: "pending", fine: "applied"}
    finally:  # never left due in the shared database
        await superuser_conn.execute(
            "UPDATE tier_scheduled_changes SET state = 'cancelled' WHERE merchant_id = $1", broken
        )


# -- migration 0032 on a database configured before it ------------------------------------------------


async def test_migration_0032_keeps_what_was_configured_before_it_and_old_deletes_keep_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncpg

    from campaign_service.adapters.postgres import migrations
    from campaign_service.adapters.postgres.pool import create_pool
    from campaign_service.adapters.postgres.provision import provision
    from campaign_service.domain.tiers import TierSpec
    from tests.conftest import required_env
    from tests.databases import ProvisionedDatabase

    superuser_dsn = required_env("CAMPAIGN_TEST_PG_DSN")
    db = ProvisionedDatabase(superuser_dsn, f"campaign_test_m32_{uuid.uuid4().hex[:8]}")
    await provision(superuser_dsn, db.name)
    # Every other migration first: a database in service gets 0032 after 0040 and 0050.
    every = migrations.available()
    monkeypatch.setattr(migrations, "available", lambda: [m for m in every if m.version != 32])
    owner = await asyncpg.connect(db.owner_dsn)
    pool = await create_pool(db.app_dsn, min_size=1, max_size=2)
    try:
        await migrations.migrate(owner)
        configured, bare = uuid.uuid4(), uuid.uuid4()
        await owner.executemany("INSERT INTO merchants (id) VALUES ($1)", [(configured,), (bare,)])
        tiers = TierService(PgUnitOfWork(pool))
        await tiers.create(configured, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
        await tiers.create(configured, "gold", TierSpec(name="Gold", min_points=1000))
        clock = Clock(datetime.now(UTC))
        dated = ScheduledChanges(PgScheduledChanges(pool), clock=clock)
        # Before 0032 the API never passed a mode: the column's default, not a caller's choice.
        await dated.schedule_delete(configured, "gold", clock.now + HOUR, mode="upgrades_only")
        await dated.schedule_update(configured, "basic", TierSpec(name="B"), ["name"], clock.now + HOUR, mode="full")

        monkeypatch.setattr(migrations, "available", lambda: every)
        assert "0032_change_modes.sql" in await migrations.migrate(owner)

        su = await asyncpg.connect(superuser_dsn, database=db.name)
        try:
            kept = await su.fetch("SELECT merchant_id, version, seeded, tiers FROM tier_config_versions")
            head = await su.fetchval("SELECT version FROM tier_config_heads WHERE merchant_id = $1", configured)
            modes = await su.fetch("SELECT kind, mode FROM tier_scheduled_changes ORDER BY kind")
        finally:
            await su.close()
        assert [(r["merchant_id"], r["version"], r["seeded"]) for r in kept] == [(configured, head, True)]
        assert [t["tier_id"] for t in json.loads(kept[0]["tiers"])] == ["basic", "gold"]
        assert [(r["kind"], r["mode"]) for r in modes] == [("tier_delete", None), ("tier_update", "full")]
        kept_from = (await dated.tiers_at(configured)).tiers[0].updated_at  # (a time before the migration)
        with pytest.raises(InvalidArgument):
            await dated.tiers_at(configured, kept_from)
        assert (await dated.tiers_at(bare, kept_from)).tiers == []
        # Writes after the migration are kept as they commit.
        between = await _tick()
        await tiers.update(configured, "gold", TierSpec(name="", min_points=1500), ["min_points"])
        after = await _tick()
        clock.now = datetime.now(UTC)
        assert (await dated.tier_at(configured, "gold", between))[0].spec.min_points == 1000
        assert (await dated.tier_at(configured, "gold", after))[0].spec.min_points == 1500
    finally:
        await pool.close()
        await owner.close()
        cleanup = await asyncpg.connect(superuser_dsn)
        try:
            await cleanup.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        finally:
            await cleanup.close()
