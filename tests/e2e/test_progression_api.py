"""The tier-progression RPCs end to end through a real service process on the real database:
GetTierProgram/UpdateTierProgram, GetCustomerTierStatus, ListCustomerTierHistory, SetCustomerTier."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_READ, SCOPE_WRITE
from tests.e2e.test_tier_api import create, gold, outbox_count, rpc_error, violations


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def update_program(stub: Any, merchant: uuid.UUID, *paths: str, version: int = 0, **values: Any) -> Any:
    return await stub.UpdateTierProgram(
        pb.UpdateTierProgramRequest(
            merchant_id=str(merchant),
            program=pb.TierProgram(**values),
            update_mask=mask(*paths),
            expected_version=version,
        )
    )


async def stored_program(superuser_conn: Any, merchant: uuid.UUID) -> Any:
    return await superuser_conn.fetchrow("SELECT * FROM tier_programs WHERE merchant_id = $1", merchant)


# -- programme --------------------------------------------------------------------------------


async def test_program_defaults_when_never_set(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    got = await stub.GetTierProgram(pb.GetTierProgramRequest(merchant_id=str(merchant)))
    assert (got.window, got.downgrade_policy, got.time_zone, got.version) == ("lifetime", "never", "UTC", 0)
    assert (got.entry_bonus, got.grace_days, got.rolling_months) == ("once_ever", 0, 0)
    assert not got.HasField("updated_at")


async def test_update_program_masked_versioned_and_announced(stub: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    before = await outbox_count(superuser_conn, merchant)
    resp = await update_program(
        stub, merchant, "window", "rolling_months", "downgrade_policy", "time_zone",
        window="rolling_months", rolling_months=12, downgrade_policy="one_down", time_zone="Europe/Paris",
        grace_days=99,  # not in the mask: ignored
    )  # fmt: skip
    assert list(resp.updated_fields) == ["window", "rolling_months", "time_zone", "downgrade_policy"]
    p = resp.program
    assert (p.window, p.rolling_months, p.downgrade_policy, p.time_zone, p.grace_days, p.version) == (
        "rolling_months", 12, "one_down", "Europe/Paris", 0, 1,
    )  # fmt: skip
    assert p.HasField("updated_at")
    got = await stub.GetTierProgram(pb.GetTierProgramRequest(merchant_id=str(merchant)))
    assert got == p
    row = await superuser_conn.fetchrow(
        "SELECT topic, key, payload FROM outbox_events WHERE merchant_id = $1 ORDER BY seq DESC LIMIT 1", merchant
    )
    assert await outbox_count(superuser_conn, merchant) == before + 1
    assert (row["topic"], row["key"]) == ("vip_tier.updated", f"{merchant}:_program")
    assert row["payload"]["tier_id"] == "_program"
    assert row["payload"]["updated_fields"] == [
        "program.window", "program.rolling_months", "program.time_zone", "program.downgrade_policy",
    ]  # fmt: skip
    assert row["payload"]["actor"] == "test-admin"
    # Version guard: the stored version is 1.
    err = await rpc_error(update_program(stub, merchant, "grace_days", version=7, grace_days=3))
    assert err.code() == grpc.StatusCode.ABORTED
    resp = await update_program(stub, merchant, "grace_days", version=1, grace_days=3)
    assert (resp.program.version, resp.program.grace_days) == (2, 3)
    # Same values again: no change, no event, no new version.
    count = await outbox_count(superuser_conn, merchant)
    resp = await update_program(stub, merchant, "grace_days", grace_days=3)
    assert list(resp.updated_fields) == []
    assert resp.program.version == 2
    assert await outbox_count(superuser_conn, merchant) == count
    # Leaving the rolling window drops its months.
    resp = await update_program(stub, merchant, "window", window="calendar_year")
    assert (resp.program.window, resp.program.rolling_months) == ("calendar_year", 0)


@pytest.mark.parametrize(
    ("paths", "values", "field"),
    [
        (["window"], {"window": "weekly"}, "program.window"),
        (["window"], {"window": ""}, "program.window"),
        (["window", "rolling_months"], {"window": "rolling_months", "rolling_months": 37}, "program.rolling_months"),
        (["window", "rolling_months"], {"window": "rolling_months", "rolling_months": -1}, "program.rolling_months"),
        (["window"], {"window": "rolling_months"}, "program.rolling_months"),
        (["rolling_months"], {"rolling_months": 6}, "program.rolling_months"),
        (["grace_days"], {"grace_days": 366}, "program.grace_days"),
        (["grace_days"], {"grace_days": -1}, "program.grace_days"),
        (["time_zone"], {"time_zone": "Mars/Olympus"}, "program.time_zone"),
        (["time_zone"], {"time_zone": "../../etc/passwd"}, "program.time_zone"),
        (["time_zone"], {"time_zone": ""}, "program.time_zone"),
        (["downgrade_policy"], {"downgrade_policy": "two_down"}, "program.downgrade_policy"),
        (["entry_bonus"], {"entry_bonus": "sometimes"}, "program.entry_bonus"),
        (["downgrade_warning_days"], {"downgrade_warning_days": 366}, "program.downgrade_warning_days"),
        (["downgrade_warning_days"], {"downgrade_warning_days": -5}, "program.downgrade_warning_days"),
        (["colour"], {}, "update_mask"),
        ([], {}, "update_mask"),
    ],
)
async def test_bad_program_is_invalid_and_stores_nothing(
    stub: Any, new_merchant: Any, superuser_conn: Any, paths: list[str], values: dict[str, Any], field: str
) -> None:
    merchant = await new_merchant()
    err = await rpc_error(update_program(stub, merchant, *paths, **values))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err)
    assert await stored_program(superuser_conn, merchant) is None
    assert await outbox_count(superuser_conn, merchant) == 0


async def test_program_rpcs_need_admin(stub_for: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    writer = stub_for(merchant, scopes=[SCOPE_WRITE])
    for call in (
        writer.GetTierProgram(pb.GetTierProgramRequest(merchant_id=str(merchant))),
        update_program(writer, merchant, "grace_days", grace_days=1),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED


# -- customer status, history, manual assignment ------------------------------------------------


async def ladder(stub: Any, merchant: uuid.UUID) -> None:
    await create(stub, merchant, gold(tier_id="silver", name="Silver", min_points=100, translations={"ar": "فضي"}))
    await create(stub, merchant, gold())
    await create(stub, merchant, gold(tier_id="platinum", name="Platinum", min_points=5000, translations={}))


async def set_tier(stub: Any, merchant: uuid.UUID, customer: uuid.UUID, tier_id: str, **kw: Any) -> Any:
    return await stub.SetCustomerTier(
        pb.SetCustomerTierRequest(
            merchant_id=str(merchant),
            customer_id=str(customer),
            tier_id=tier_id,
            reason=kw.pop("reason", "goodwill"),
            **kw,
        )
    )


async def add_points(superuser_conn: Any, merchant: uuid.UUID, customer: uuid.UUID, day: Any, points: int) -> None:
    await superuser_conn.execute(
        "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points) VALUES ($1, $2, $3, $4)",
        merchant,
        customer,
        day,
        points,
    )


async def status(stub: Any, merchant: uuid.UUID, customer: uuid.UUID, locale: str = "") -> Any:
    return await stub.GetCustomerTierStatus(
        pb.GetCustomerTierStatusRequest(merchant_id=str(merchant), customer_id=str(customer), locale=locale)
    )


@pytest.mark.parametrize(
    ("policy", "points", "keep", "if_now"),
    [
        ("to_qualified", 300, 700, "silver"),
        ("to_qualified", 20, 980, "silver"),  # nothing reached: the ladder's lowest tier
        ("one_down", 300, 700, "silver"),
        ("to_qualified", 1200, 0, "gold"),
        ("to_qualified", 6000, 0, "platinum"),  # late points of the period would move it up
        ("never", 300, 0, "gold"),
    ],
)
async def test_status_of_a_calendar_year_customer(
    stub: Any, new_merchant: Any, superuser_conn: Any, policy: str, points: int, keep: int, if_now: str
) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    await update_program(
        stub, merchant, "window", "downgrade_policy", "grace_days", window="calendar_year",
        downgrade_policy=policy, grace_days=10,
    )  # fmt: skip
    await set_tier(stub, merchant, customer, "gold")
    today = datetime.now(UTC).date()
    await add_points(superuser_conn, merchant, customer, today, points)
    await add_points(superuser_conn, merchant, customer, today.replace(year=today.year - 1), 4000)  # last year
    got = await status(stub, merchant, customer, "ar")
    assert (got.tier.tier_id, got.tier.display_name, got.tier.resolved_locale) == ("gold", "ذهبي", "ar")
    assert got.window_points == points
    assert (got.next_tier.tier_id, got.points_to_next_tier) == ("platinum", max(5000 - points, 0))
    assert got.points_to_keep_tier == keep
    assert got.tier_if_deadline_now.tier_id == if_now
    if policy == "never":
        assert not got.HasField("deadline")
    else:
        deadline = got.deadline.ToDatetime(tzinfo=UTC)
        assert deadline == datetime(today.year + 1, 1, 1, tzinfo=UTC) + timedelta(days=10)
    assert got.since.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=5)


async def test_status_lifetime_top_tier_and_floor(stub: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    await set_tier(stub, merchant, customer, "platinum")
    await add_points(superuser_conn, merchant, customer, datetime(2020, 5, 1).date(), 42)
    got = await status(stub, merchant, customer)
    assert (got.tier.tier_id, got.window_points, got.points_to_next_tier) == ("platinum", 42, 0)
    assert not got.HasField("next_tier")
    assert not got.HasField("deadline")
    assert got.tier_if_deadline_now.tier_id == "platinum"
    # A floor holds a rolling-window customer at gold whatever the period's points.
    await update_program(
        stub, merchant, "window", "rolling_months", "downgrade_policy",
        window="rolling_months", rolling_months=3, downgrade_policy="to_qualified",
    )  # fmt: skip
    until = datetime.now(UTC) + timedelta(days=400)
    resp = await set_tier(stub, merchant, customer, "gold", as_floor=True, floor_until=_ts(until))
    assert resp.changed
    got = await status(stub, merchant, customer)
    assert (got.tier.tier_id, got.floor_tier_id) == ("gold", "gold")
    assert got.floor_until.ToDatetime(tzinfo=UTC) == until.replace(microsecond=until.microsecond // 1000 * 1000)
    assert got.tier_if_deadline_now.tier_id == "gold"
    assert got.points_to_keep_tier == 0


def _ts(at: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


async def test_status_of_a_customer_without_tier_is_not_found(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    err = await rpc_error(status(stub, merchant, uuid.uuid4()))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_set_customer_tier_writes_state_history_and_event(
    stub: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    resp = await set_tier(stub, merchant, customer, "silver")
    assert (resp.changed, resp.previous_tier_id, resp.tier_id) == (True, "", "silver")
    resp = await set_tier(stub, merchant, customer, "gold", reason="vip.call-centre")
    assert (resp.changed, resp.previous_tier_id) == (True, "silver")
    row = await superuser_conn.fetchrow(
        "SELECT topic, key, payload FROM outbox_events WHERE merchant_id = $1 ORDER BY seq DESC LIMIT 1", merchant
    )
    assert (row["topic"], row["key"]) == ("vip_tier.assigned", f"{merchant}:{customer}")
    p = row["payload"]
    assert (p["tier_id"], p["previous_tier_id"], p["direction"], p["reason"], p["bonus_points"]) == (
        "gold", "silver", "manual", "manual", 0,
    )  # fmt: skip
    history = await superuser_conn.fetch(
        "SELECT from_tier_id, tier_id, direction, reason, actor, source FROM customer_tier_history"
        " WHERE merchant_id = $1 AND customer_id = $2 ORDER BY id",
        merchant,
        customer,
    )
    assert [tuple(r) for r in history] == [
        (None, "silver", "manual", "manual", "test-admin", "manual"),
        ("silver", "gold", "manual", "manual", "test-admin", "manual"),
    ]
    audit = await superuser_conn.fetch(
        "SELECT tier_id, moved, reason, actor FROM tier_manual_assignments WHERE merchant_id = $1 ORDER BY id",
        merchant,
    )
    assert [tuple(r) for r in audit] == [
        ("silver", True, "goodwill", "test-admin"),
        ("gold", True, "vip.call-centre", "test-admin"),
    ]
    # The same tier again: nothing moves, no history, no event.
    before = await outbox_count(superuser_conn, merchant)
    resp = await set_tier(stub, merchant, customer, "gold")
    assert not resp.changed
    assert await outbox_count(superuser_conn, merchant) == before
    assert (
        await superuser_conn.fetchval("SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1", merchant)
        == 2
    )


@pytest.mark.parametrize(
    ("tier_id", "kw", "code", "field"),
    [
        ("diamond", {}, grpc.StatusCode.NOT_FOUND, None),
        ("Gold!", {}, grpc.StatusCode.INVALID_ARGUMENT, "tier_id"),
        ("gold", {"reason": ""}, grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        ("gold", {"reason": "Angry customer called, Mr Smith"}, grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        ("gold", {"floor_until": "future"}, grpc.StatusCode.INVALID_ARGUMENT, "floor_until"),
        ("gold", {"as_floor": True, "floor_until": "past"}, grpc.StatusCode.INVALID_ARGUMENT, "floor_until"),
    ],
)
async def test_bad_set_customer_tier_changes_nothing(
    stub: Any, new_merchant: Any, superuser_conn: Any, tier_id: str, kw: dict[str, Any], code: Any, field: str | None
) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    before = await outbox_count(superuser_conn, merchant)
    if "floor_until" in kw:
        delta = timedelta(days=30) if kw["floor_until"] == "future" else -timedelta(days=1)
        kw["floor_until"] = _ts(datetime.now(UTC) + delta)
    err = await rpc_error(set_tier(stub, merchant, customer, tier_id, **kw))
    assert err.code() == code
    if field:
        assert field in violations(err)
    assert await outbox_count(superuser_conn, merchant) == before
    for table in ("customer_tiers", "customer_tier_history", "tier_manual_assignments"):
        assert await superuser_conn.fetchval(f"SELECT count(*) FROM {table} WHERE merchant_id = $1", merchant) == 0


async def test_history_pages_newest_first_with_a_bound_token(stub: Any, new_merchant: Any) -> None:
    merchant, other, customer = await new_merchant(), await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    for tier_id in ("silver", "gold", "platinum"):
        await set_tier(stub, merchant, customer, tier_id)

    async def page(size: int, token: str = "", m: uuid.UUID = merchant, c: uuid.UUID = customer) -> Any:
        return await stub.ListCustomerTierHistory(
            pb.ListCustomerTierHistoryRequest(merchant_id=str(m), customer_id=str(c), page_size=size, page_token=token)
        )

    first = await page(2)
    assert [(e.from_tier_id, e.tier_id) for e in first.entries] == [("gold", "platinum"), ("silver", "gold")]
    assert first.entries[0].actor == "test-admin"
    assert first.entries[0].direction == "manual"
    assert first.next_page_token
    second = await page(2, first.next_page_token)
    assert [(e.from_tier_id, e.tier_id) for e in second.entries] == [("", "silver")]
    assert second.next_page_token == ""
    assert [e.tier_id for e in (await page(0)).entries] == ["platinum", "gold", "silver"]
    for call in (
        page(2, first.next_page_token, m=other),  # another merchant's token
        page(2, first.next_page_token, c=uuid.uuid4()),  # another customer's
        page(2, "not-a-token"),
        page(101),
        page(-1),
    ):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err)[0] in ("page_token", "page_size")


async def test_scopes_of_the_customer_rpcs(stub: Any, stub_for: Any, new_merchant: Any) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    await set_tier(stub, merchant, customer, "gold")
    reader = stub_for(merchant, scopes=[SCOPE_READ])
    assert (await status(reader, merchant, customer)).tier.tier_id == "gold"
    history = await reader.ListCustomerTierHistory(
        pb.ListCustomerTierHistoryRequest(merchant_id=str(merchant), customer_id=str(customer))
    )
    assert len(history.entries) == 1
    writer = stub_for(merchant, scopes=[SCOPE_WRITE])
    err = await rpc_error(set_tier(writer, merchant, customer, "silver"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    other = stub_for(await new_merchant(), scopes=[SCOPE_READ])
    assert (await rpc_error(status(other, merchant, customer))).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_programme_change_reschedules_existing_customers(
    stub: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await new_merchant(), uuid.uuid4()
    await ladder(stub, merchant)
    await set_tier(stub, merchant, customer, "gold")  # under the defaults: never re-assessed

    async def deadline() -> Any:
        return await superuser_conn.fetchval(
            "SELECT deadline FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
        )

    assert await deadline() is None
    before = await outbox_count(superuser_conn, merchant)
    await update_program(
        stub, merchant, "window", "downgrade_policy", window="calendar_year", downgrade_policy="to_qualified"
    )
    next_year = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
    assert await deadline() == next_year
    await update_program(stub, merchant, "grace_days", grace_days=10)
    assert await deadline() == next_year + timedelta(days=10)
    got = await status(stub, merchant, customer)
    assert got.deadline.ToDatetime(tzinfo=UTC) == next_year + timedelta(days=10)
    await update_program(stub, merchant, "downgrade_policy", downgrade_policy="never")
    assert await deadline() is None
    # Re-timing moves no tier: only the three programme events were written.
    assert await outbox_count(superuser_conn, merchant) == before + 3
    assert (
        await superuser_conn.fetchval("SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1", merchant)
        == 1
    )
