"""The customer.created handler on the real database (and the Redis fast path on the real Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from campaign_service import redis_keys, topics
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.redis.client import RedisBreaker
from campaign_service.adapters.redis.processed import RedisProcessedEvents
from campaign_service.events.customer_created import CustomerCreatedHandler
from campaign_service.events.ports import InboundEvent, Rejected
from tests.conftest import free_port


def created(merchant: uuid.UUID, customer: uuid.UUID, event_id: uuid.UUID, **headers: str) -> InboundEvent:
    payload = {"event_id": event_id, "customer_id": customer, "merchant_id": merchant, "created_at": 0}
    return InboundEvent(topics.CUSTOMER_CREATED, str(merchant), payload, headers)


async def counts(superuser_conn: Any, merchant: uuid.UUID, event_id: uuid.UUID) -> tuple[int, int, int]:
    """(assignments ever made, vip_tier.assigned outbox rows, processed_events rows) of the merchant."""
    history = await superuser_conn.fetchval(
        "SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1", merchant
    )
    outbox = await superuser_conn.fetchval(
        "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND topic = $2", merchant, topics.VIP_TIER_ASSIGNED
    )
    processed = await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id)
    return history, outbox, processed


async def test_concurrent_deliveries_of_one_event_assign_once(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, customer, event_id = await merchant_with_default(), uuid.uuid4(), uuid.uuid4()
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool))  # no fast path: the database alone dedupes
    await asyncio.gather(*(handler(created(merchant, customer, event_id)) for _ in range(3)))
    await handler(created(merchant, customer, event_id))
    assert await counts(superuser_conn, merchant, event_id) == (1, 1, 1)
    payload = await superuser_conn.fetchval(
        "SELECT payload FROM outbox_events WHERE merchant_id = $1 AND topic = $2", merchant, topics.VIP_TIER_ASSIGNED
    )
    assert (payload["customer_id"], payload["tier_id"], payload["cause_event_id"]) == (
        str(customer),
        "basic",
        str(event_id),
    )


async def test_a_second_event_for_the_same_customer_assigns_nothing_more(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, customer = await merchant_with_default(), uuid.uuid4()
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool))
    await handler(created(merchant, customer, uuid.uuid4()))
    second = uuid.uuid4()
    await handler(created(merchant, customer, second))
    assert await counts(superuser_conn, merchant, second) == (1, 1, 1)


async def test_unknown_merchant_and_bad_ids_are_rejected_without_writing(app_pool: Any, superuser_conn: Any) -> None:
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool))
    stranger, event_id = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(Rejected) as err:
        await handler(created(stranger, uuid.uuid4(), event_id))
    assert err.value.reason == "unknown_merchant"
    assert await counts(superuser_conn, stranger, event_id) == (0, 0, 0)
    for payload in ({"event_id": str(event_id)}, {"event_id": "x", "customer_id": "y", "merchant_id": "z"}):
        with pytest.raises(Rejected) as err:
            await handler(InboundEvent(topics.CUSTOMER_CREATED, None, payload))
        assert err.value.reason == "invalid_payload"


async def test_no_default_tier_records_the_event_and_assigns_nothing(
    app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant, event_id = await new_merchant(), uuid.uuid4()
    await CustomerCreatedHandler(PgUnitOfWork(app_pool))(created(merchant, uuid.uuid4(), event_id))
    assert await counts(superuser_conn, merchant, event_id) == (0, 0, 1)


async def test_correlation_id_header_is_carried_into_the_assigned_event(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    await CustomerCreatedHandler(PgUnitOfWork(app_pool))(
        created(merchant, uuid.uuid4(), uuid.uuid4(), correlation_id="from-core-42")
    )
    headers = await superuser_conn.fetchval(
        "SELECT headers FROM outbox_events WHERE merchant_id = $1 AND topic = $2", merchant, topics.VIP_TIER_ASSIGNED
    )
    assert headers["correlation_id"] == "from-core-42"


async def test_redis_fast_path_remembers_for_24h_and_short_circuits(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any, redis_client: aioredis.Redis
) -> None:
    merchant, customer, event_id = await merchant_with_default(), uuid.uuid4(), uuid.uuid4()
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool), RedisProcessedEvents(redis_client, RedisBreaker(1.0)))
    await handler(created(merchant, customer, event_id))
    key = redis_keys.processed(merchant, event_id)
    assert key == f"processed:{{{merchant}}}:{event_id}"
    assert 86_000 < await redis_client.ttl(key) <= 86_400
    # Forget the event in the database only: a redelivery must now stop at Redis, before the database.
    await superuser_conn.execute("DELETE FROM processed_events WHERE event_id = $1", event_id)
    await handler(created(merchant, customer, event_id))
    assert await counts(superuser_conn, merchant, event_id) == (1, 1, 0)


async def test_redis_down_falls_back_to_the_database(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any
) -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    merchant, customer, event_id = await merchant_with_default(), uuid.uuid4(), uuid.uuid4()
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool), RedisProcessedEvents(dead, RedisBreaker(1.0)))
    try:
        for _ in range(2):
            await handler(created(merchant, customer, event_id))
    finally:
        await dead.aclose()
    assert await counts(superuser_conn, merchant, event_id) == (1, 1, 1)


async def test_a_paused_redis_costs_one_timeout_per_cool_down_not_two_per_batch(
    app_pool: Any, merchant_with_default: Any, superuser_conn: Any, own_redis: Any, service_redis: Any
) -> None:
    """SIGSTOPped Redis: connections are accepted and nothing is answered, so every command waits
    for the whole timeout. The first batch pays it once; later batches skip the fast path while the
    breaker (shared with the cache and the rate limit) is open."""
    server = own_redis()
    client = service_redis("127.0.0.1", server.port, redis_timeout_ms=1000)
    breaker = RedisBreaker(retry_after_s=60)
    handler = CustomerCreatedHandler(PgUnitOfWork(app_pool), RedisProcessedEvents(client, breaker))
    merchant = await merchant_with_default()
    await handler.batch([created(merchant, uuid.uuid4(), uuid.uuid4())])  # connections made while it answers
    server.pause()
    costs = []
    for _ in range(4):
        events = [created(merchant, uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
        started = time.perf_counter()
        assert await handler.batch(events) == [None] * 3
        costs.append(time.perf_counter() - started)
    server.resume()
    # A wait for Redis costs the whole timeout (1 s); a batch that skips Redis costs only its
    # transaction (well under it, even on a loaded machine).
    assert 1.0 <= costs[0] < 1.0 + 0.8, f"the first batch waits for one timeout: {costs}"
    assert max(costs[1:]) < 0.8, f"later batches do not wait for Redis: {costs}"
    assert not breaker.allows()
