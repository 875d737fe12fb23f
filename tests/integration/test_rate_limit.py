"""The per-merchant rate limit on the real Redis: the exact boundary, sharing between instances,
and the per-instance fallback while Redis is unreachable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis

from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.redis.client import RedisBreaker
from campaign_service.adapters.redis.limiter import RedisRateLimiter
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.service.ports import RateLimiter
from tests.conftest import free_port


async def admitted(limiter: RateLimiter, merchant: uuid.UUID, n: int) -> int:
    return sum([(await limiter.acquire(merchant)).allowed for _ in range(n)])


async def test_hundred_pass_the_hundred_and_first_waits(
    redis_client: aioredis.Redis, service_redis: Callable[..., aioredis.Redis], service_pipe: Callable[..., RedisPipe]
) -> None:
    limiter = RedisRateLimiter(service_pipe(), RedisBreaker(1.0), limit=100, window_s=1.0)
    merchant = uuid.uuid4()

    assert await admitted(limiter, merchant, 100) == 100
    refused = await limiter.acquire(merchant)
    assert not refused.allowed
    assert refused.limiter == "redis"
    assert 0 < refused.retry_after_s <= 1.0
    assert not (await limiter.acquire(uuid.UUID(int=merchant.int))).allowed  # same merchant, same count
    assert (await limiter.acquire(uuid.uuid4())).allowed  # other merchants have their own

    key = f"rate_limit:{{{merchant}}}:campaign"
    assert await redis_client.zcard(key) == 100  # refused requests do not count
    assert 0 < await redis_client.ttl(key) <= 60

    await asyncio.sleep(refused.retry_after_s)
    assert (await limiter.acquire(merchant)).allowed


async def test_instances_share_one_budget(
    service_redis: Callable[..., aioredis.Redis], service_pipe: Callable[..., RedisPipe]
) -> None:
    a, b = (RedisRateLimiter(service_pipe(), RedisBreaker(1.0), limit=100, window_s=5.0) for _ in range(2))
    merchant = uuid.uuid4()
    assert await admitted(a, merchant, 60) == 60
    assert await admitted(b, merchant, 40) == 40
    assert not (await a.acquire(merchant)).allowed
    assert not (await b.acquire(merchant)).allowed


async def test_limits_per_instance_while_redis_is_unreachable(
    service_redis: Callable[..., aioredis.Redis], service_pipe: Callable[..., RedisPipe]
) -> None:
    pipe = service_pipe("127.0.0.1", free_port(), redis_timeout_ms=100)
    limiter = RedisRateLimiter(pipe, RedisBreaker(60.0), limit=100, window_s=5.0)
    merchant = uuid.uuid4()
    decisions = [await limiter.acquire(merchant) for _ in range(101)]
    assert [d.allowed for d in decisions].count(True) == 100
    assert not decisions[-1].allowed
    assert {d.limiter for d in decisions} == {"local"}


async def test_local_limiter_boundary() -> None:
    now = [100.0]
    limiter = LocalRateLimiter(limit=100, window_s=1.0, clock=lambda: now[0])
    merchant = uuid.uuid4()
    assert await admitted(limiter, merchant, 100) == 100
    now[0] = 100.6
    refused = await limiter.acquire(merchant)
    assert (refused.allowed, round(refused.retry_after_s, 6)) == (False, 0.4)
    now[0] = 101.0
    assert (await limiter.acquire(merchant)).allowed


async def test_local_limiter_forgets_least_recent_merchants() -> None:
    limiter = LocalRateLimiter(limit=1, window_s=60.0, max_merchants=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for m in (first, second, third):
        assert (await limiter.acquire(m)).allowed
    assert not (await limiter.acquire(third)).allowed
    assert (await limiter.acquire(first)).allowed  # evicted, so counted afresh


async def evalsha_calls(client: aioredis.Redis | aioredis.RedisCluster) -> int:
    """Script calls so far, summed over every node (a cluster client answers per node)."""
    if isinstance(client, aioredis.RedisCluster):
        replies = list((await client.info("commandstats", target_nodes=aioredis.RedisCluster.PRIMARIES)).values())
    else:
        replies = [await client.info("commandstats")]
    return sum(
        int(s.get("cmdstat_evalsha", {}).get("calls", 0)) + int(s.get("cmdstat_eval", {}).get("calls", 0)) for s in replies
    )


async def test_concurrent_requests_share_round_trips_but_never_pass_the_limit(
    redis_client: aioredis.Redis, service_redis: Callable[..., aioredis.Redis], service_pipe: Callable[..., RedisPipe]
) -> None:
    limiter = RedisRateLimiter(service_pipe(), RedisBreaker(1.0), limit=100, window_s=5.0)
    merchant = uuid.uuid4()
    await limiter.acquire(uuid.uuid4())  # loads the script
    before = await evalsha_calls(redis_client)
    decisions = await asyncio.gather(*(limiter.acquire(merchant) for _ in range(150)))
    calls = await evalsha_calls(redis_client) - before
    assert [d.allowed for d in decisions].count(True) == 100
    assert all(0 < d.retry_after_s <= 5.0 for d in decisions if not d.allowed)
    assert await redis_client.zcard(f"rate_limit:{{{merchant}}}:campaign") == 100
    assert calls < 10  # one script call per batch, not one per request
