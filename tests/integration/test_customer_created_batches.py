"""The customer.created handler's batch path on the real database: one transaction per merchant of
a batch, dedupe within and across batches, a bad event failing alone, RLS per merchant."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from campaign_service import topics
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.domain.tiers import TierSpec
from campaign_service.events.customer_created import CustomerCreatedHandler
from campaign_service.events.ports import Deferred, InboundEvent, Rejected
from tests.conftest import OwnDatabase


def created(merchant: uuid.UUID, customer: uuid.UUID, event_id: uuid.UUID, key: str | None = None) -> InboundEvent:
    payload = {"event_id": event_id, "customer_id": customer, "merchant_id": merchant, "created_at": 0}
    return InboundEvent(topics.CUSTOMER_CREATED, key if key is not None else str(merchant), payload, {})


async def ledger(conn: Any, merchant: uuid.UUID) -> dict[str, Any]:
    """What the database holds for a merchant (read as superuser, past RLS)."""
    return {
        "assignments": {
            r["customer_id"]: r["cause_event_id"]
            for r in await conn.fetch(
                "SELECT customer_id, cause_event_id FROM customer_tier_history WHERE merchant_id = $1", merchant
            )
        },
        "history_rows": await conn.fetchval(
            "SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1", merchant
        ),
        "announced": [
            r["cause"]
            for r in await conn.fetch(
                "SELECT headers->>'cause_event_id' AS cause FROM outbox_events"
                " WHERE merchant_id = $1 AND topic = $2 ORDER BY seq",
                merchant,
                topics.VIP_TIER_ASSIGNED,
            )
        ],
        "processed": sorted(
            r["event_id"]
            for r in await conn.fetch("SELECT event_id FROM processed_events WHERE merchant_id = $1", merchant)
        ),
    }


async def test_copies_within_and_across_batches_give_one_assignment_and_one_announcement_each(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    c1, c2, c3, c4 = (uuid.uuid4() for _ in range(4))
    e1, e2, e3, e4, e1_again_for_c1 = (uuid.uuid4() for _ in range(5))
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool))  # no fast path: the database alone dedupes

    first = [created(merchant, c1, e1), created(merchant, c2, e2), created(merchant, c1, e1), created(merchant, c3, e3)]
    assert await handler.batch(first) == [None] * 4
    # e2 and e1 again (an earlier batch), c4's first event, and a second event for c1.
    second = [
        created(merchant, c2, e2),
        created(merchant, c1, e1),
        created(merchant, c4, e4),
        created(merchant, c1, e1_again_for_c1),
    ]
    assert await handler.batch(second) == [None] * 4

    got = await ledger(superuser_conn, merchant)
    assert got["assignments"] == {c1: e1, c2: e2, c3: e3, c4: e4}
    assert got["history_rows"] == 4
    assert got["announced"] == [str(e1), str(e2), str(e3), str(e4)], "one each, in the order of the events"
    assert got["processed"] == sorted([e1, e2, e3, e4, e1_again_for_c1])


async def test_a_customers_first_event_in_a_batch_assigns_and_a_later_one_does_not(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, customer = await merchant_with_default(), uuid.uuid4()
    earlier, later = uuid.uuid4(), uuid.uuid4()
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool))
    assert await handler.batch([created(merchant, customer, earlier), created(merchant, customer, later)]) == [None] * 2
    got = await ledger(superuser_conn, merchant)
    assert got["assignments"] == {customer: earlier}
    assert got["announced"] == [str(earlier)]


async def test_two_merchants_in_one_batch_each_write_under_their_own_merchant(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    a, b = await merchant_with_default(), await merchant_with_default()
    customers = {a: [uuid.uuid4(), uuid.uuid4()], b: [uuid.uuid4(), uuid.uuid4()]}
    batch = [created(m, customers[m][i], uuid.uuid4()) for i in range(2) for m in (a, b)]  # a, b, a, b
    assert await CustomerCreatedHandler(PgUnitOfWork(app_pool)).batch(batch) == [None] * 4

    for merchant, other in ((a, b), (b, a)):
        assert set((await ledger(superuser_conn, merchant))["assignments"]) == set(customers[merchant])
        # As the service role with RLS: only the merchant's own rows, whatever the batch held.
        async with app_pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
            seen = {r["customer_id"] for r in await conn.fetch("SELECT customer_id FROM customer_tiers")}
            outbox = await conn.fetchval(
                "SELECT count(*) FROM outbox_events WHERE topic = $1", topics.VIP_TIER_ASSIGNED
            )
            processed = await conn.fetchval(
                "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::uuid[])",
                [e.payload["event_id"] for e in batch],
            )
        assert seen == set(customers[merchant])
        assert not seen & set(customers[other])
        assert (outbox, processed) == (2, 2)


async def test_bad_events_in_the_middle_of_a_batch_are_rejected_alone(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, stranger = await merchant_with_default(), uuid.uuid4()
    good1, good2 = uuid.uuid4(), uuid.uuid4()
    batch = [
        created(merchant, uuid.uuid4(), good1),
        InboundEvent(topics.CUSTOMER_CREATED, None, {"event_id": "x", "customer_id": "y", "merchant_id": "z"}),
        created(stranger, uuid.uuid4(), uuid.uuid4()),
        created(merchant, uuid.uuid4(), good2),
    ]
    outcomes = await CustomerCreatedHandler(PgUnitOfWork(app_pool)).batch(batch)
    assert [o.reason if isinstance(o, Rejected) else o for o in outcomes] == [
        None,
        "invalid_payload",
        "unknown_merchant",
        None,
    ]
    assert sorted((await ledger(superuser_conn, merchant))["processed"]) == sorted([good1, good2])
    assert (await ledger(superuser_conn, stranger))["processed"] == []


async def test_a_correlation_id_jsonb_cannot_hold_is_replaced_not_fatal(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, event_id = await merchant_with_default(), uuid.uuid4()
    event = created(merchant, uuid.uuid4(), event_id)
    event = InboundEvent(event.source, event.key, event.payload, {"correlation_id": "bad\x00id"})
    assert await CustomerCreatedHandler(PgUnitOfWork(app_pool)).batch([event]) == [None]
    headers = await superuser_conn.fetchval(
        "SELECT headers FROM outbox_events WHERE headers->>'cause_event_id' = $1", str(event_id)
    )
    assert uuid.UUID(headers["correlation_id"])


async def test_when_a_merchants_transaction_fails_its_events_go_one_by_one_and_only_the_bad_one_waits(
    own_db: OwnDatabase,
) -> None:
    merchant = await own_db.merchant()
    await own_db.tiers.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
    cursed = uuid.uuid4()
    # A fault only this customer's assignment meets (a deterministic database error, not an outage).
    await own_db.su.execute(
        "CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$"
    )
    await own_db.su.execute(
        "CREATE TRIGGER refuse_cursed BEFORE INSERT ON customer_tiers FOR EACH ROW"
        f" WHEN (NEW.customer_id = '{cursed}') EXECUTE FUNCTION refuse_cursed()"
    )
    ok1, bad, after_bad, ok2 = (uuid.uuid4() for _ in range(4))
    batch = [
        created(merchant, uuid.uuid4(), ok1, key="k1"),
        created(merchant, cursed, bad, key="k2"),
        created(merchant, uuid.uuid4(), after_bad, key="k2"),  # same key: must wait for `bad`
        created(merchant, uuid.uuid4(), ok2, key="k3"),
    ]
    handler = CustomerCreatedHandler(PgUnitOfWork(own_db.pool))
    outcomes = await handler.batch(batch)
    assert [type(o) for o in outcomes] == [type(None), asyncpg.RaiseError, Deferred, type(None)], (
        "the bad event fails to be retried (not dead-lettered), its key's next waits, the rest commit"
    )
    got = await ledger(own_db.su, merchant)
    assert sorted(got["processed"]) == sorted([ok1, ok2]), "nothing of the failed event nor of its key's next"
    assert got["announced"] == [str(ok1), str(ok2)]

    await own_db.su.execute("DROP TRIGGER refuse_cursed ON customer_tiers")
    assert await handler.batch(batch) == [None] * 4  # the redelivery
    got = await ledger(own_db.su, merchant)
    assert sorted(got["processed"]) == sorted([ok1, bad, after_bad, ok2])
    assert got["history_rows"] == 4
    assert got["announced"] == [str(ok1), str(ok2), str(bad), str(after_bad)]
