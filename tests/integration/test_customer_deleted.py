"""customer.deleted on the real database: one customer's tier state, history, manual assignments
and qualifying points erased in one transaction with a `vip_tier.customer_erased` audit row; a
duplicate changes nothing; unknown merchants and bad payloads are dead-lettered; the history stays
append-only for the service role outside the erasure function, which reaches one merchant only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from campaign_service import topics
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.events.customer_deleted import CustomerDeletedHandler
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.events.ports import InboundEvent, Rejected
from campaign_service.service.progression_api import ProgressionApi
from tests.integration.test_points_recorded import entry
from tests.integration.test_schema import seed_tier

ERASED_TABLES = ("customer_tiers", "customer_tier_history", "qualifying_points_daily", "tier_manual_assignments")


def deleted(merchant: Any, customer: Any, event_id: uuid.UUID | None = None) -> InboundEvent:
    payload = {
        "event_id": event_id or uuid.uuid4(),
        "merchant_id": merchant,
        "customer_id": customer,
        "deleted_at": datetime.now(UTC),
    }
    return InboundEvent(topics.CUSTOMER_DELETED, f"{merchant}:{customer}", payload, {"correlation_id": "corr-del"})


async def rows_of(conn: Any, merchant: uuid.UUID, customer: uuid.UUID) -> dict[str, int]:
    return {
        t: int(
            await conn.fetchval(
                f"SELECT count(*) FROM {t} WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
            )
        )
        for t in ERASED_TABLES
    }


async def customer_with_everything(owner_conn: Any, app_pool: Any, merchant: uuid.UUID, customer: uuid.UUID) -> None:
    """State, two history rows, points and a manual assignment, written the way the service does."""
    await PointsRecordedHandler(PgProgression(app_pool))(entry(merchant, customer, 150))
    await ProgressionApi(PgProgressionApi(app_pool)).assign(merchant, customer, "gold", "goodwill")


@pytest.fixture
async def two_customers(new_merchant: Any, owner_conn: Any, app_pool: Any) -> Any:
    merchant, other_merchant = await new_merchant(), await new_merchant()
    customer, neighbour = uuid.uuid4(), uuid.uuid4()
    for m in (merchant, other_merchant):
        await seed_tier(owner_conn, app_pool, m, "silver")
        await seed_tier(owner_conn, app_pool, m, "gold")
    await customer_with_everything(owner_conn, app_pool, merchant, customer)
    await customer_with_everything(owner_conn, app_pool, merchant, neighbour)
    await customer_with_everything(owner_conn, app_pool, other_merchant, customer)  # same id, other tenant
    return merchant, other_merchant, customer, neighbour


async def test_erases_one_customer_in_one_transaction_with_an_audit_event(
    app_pool: Any, superuser_conn: Any, two_customers: Any
) -> None:
    merchant, other_merchant, customer, neighbour = two_customers
    before = await rows_of(superuser_conn, merchant, customer)
    assert all(before.values()), before  # really something to erase in every table
    untouched = [
        await rows_of(superuser_conn, merchant, neighbour),
        await rows_of(superuser_conn, other_merchant, customer),
    ]
    event = deleted(merchant, customer)
    handler = CustomerDeletedHandler(PgProgressionApi(app_pool))
    assert await handler.batch([event, event, event]) == [None, None, None]  # 3 deliveries
    assert await rows_of(superuser_conn, merchant, customer) == dict.fromkeys(ERASED_TABLES, 0)
    assert untouched == [
        await rows_of(superuser_conn, merchant, neighbour),
        await rows_of(superuser_conn, other_merchant, customer),
    ]
    audit = await superuser_conn.fetch(
        "SELECT key, payload, headers FROM outbox_events WHERE merchant_id = $1 AND topic = $2",
        merchant,
        topics.VIP_TIER_CUSTOMER_ERASED,
    )
    assert len(audit) == 1  # the duplicates changed nothing
    payload = audit[0]["payload"]
    assert audit[0]["key"] == f"{merchant}:{customer}"
    assert set(payload) == {"event_id", "merchant_id", "customer_id", "cause_event_id", "erased_at"}  # ids only
    assert (payload["customer_id"], payload["cause_event_id"]) == (str(customer), str(event.payload["event_id"]))
    assert audit[0]["headers"]["correlation_id"] == "corr-del"
    # Another request to erase the same customer: nothing left to erase, audited again.
    assert await handler.batch([deleted(merchant, customer)]) == [None]
    assert (
        await superuser_conn.fetchval(
            "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND topic = $2",
            merchant,
            topics.VIP_TIER_CUSTOMER_ERASED,
        )
        == 2
    )


async def test_unknown_merchant_and_bad_payloads_are_dead_lettered(app_pool: Any, superuser_conn: Any) -> None:
    handler = CustomerDeletedHandler(PgProgressionApi(app_pool))
    ghost = uuid.uuid4()
    bad = InboundEvent(topics.CUSTOMER_DELETED, None, {"event_id": "x", "merchant_id": ghost, "customer_id": ghost})
    missing = InboundEvent(topics.CUSTOMER_DELETED, None, {"event_id": uuid.uuid4(), "merchant_id": ghost})
    outcomes = await handler.batch([deleted(ghost, uuid.uuid4()), bad, missing])
    assert [o.reason if isinstance(o, Rejected) else o for o in outcomes] == [
        "unknown_merchant",
        "invalid_payload",
        "invalid_payload",
    ]
    assert await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE merchant_id = $1", ghost) == 0


async def test_history_stays_append_only_outside_the_erasure_function(app_pool: Any, two_customers: Any) -> None:
    merchant, other_merchant, customer, _ = two_customers
    async with app_pool.acquire() as conn:
        for statement in (
            "UPDATE customer_tier_history SET tier_id = 'x' WHERE merchant_id = $1",
            "DELETE FROM customer_tier_history WHERE merchant_id = $1",
            "DELETE FROM tier_manual_assignments WHERE merchant_id = $1",
            "UPDATE tier_manual_assignments SET reason = 'x' WHERE merchant_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                    await conn.execute(statement, merchant)
        # The function without a merchant scope is refused.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.fetchval("SELECT campaign_erase_customer_history($1)", customer)
        # Scoped to merchant A it erases A's rows only (the other merchant's same customer id stays),
        # and a set scope (app.merchant_ids, the consumers') does not open B either.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(other_merchant))
            await conn.execute(
                "SELECT set_config('app.merchant_ids', $1, true)", f'{{"{merchant}": true, "{other_merchant}": true}}'
            )
            assert await conn.fetchval("SELECT campaign_erase_customer_history($1)", customer) == 2
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
            assert (
                await conn.fetchval("SELECT count(*) FROM customer_tier_history WHERE customer_id = $1", customer) == 2
            )
            # campaign.erasing set by the caller opens nothing: the owner's policies are not the app role's.
            await conn.execute("SELECT set_config('campaign.erasing', 'on', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM customer_tier_history WHERE customer_id = $1", customer)
