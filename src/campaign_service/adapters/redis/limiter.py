"""The per-merchant rate limit shared by every instance through `rate_limit:{merchant_id}:campaign`,
falling back to the per-instance limiter while Redis is unavailable.

Concurrent requests of one merchant that arrive in the same event-loop turn are counted in one
script call (one Redis round trip for the batch instead of one per request); the script admits
at most what the window has room for, so batching never lets more than the limit through.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from campaign_service import redis_keys
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.redis.client import REDIS_FAILURES, RedisBreaker, unique_token
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.service.ports import RateDecision

# A sliding-window log in a sorted set, atomic in one script and timed by Redis's clock (one clock
# for every instance). KEYS[1]; ARGV: limit, window (µs), unique member prefix, key TTL (s),
# requests in this batch. Returns {admitted, µs until the oldest request leaves the window}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wanted = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local admitted = math.max(0, math.min(wanted, limit - redis.call('ZCARD', KEYS[1])))
for i = 1, admitted do
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. i)
end
if admitted > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local wait = 0
if admitted < wanted then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = window
  if oldest[2] then
    wait = tonumber(oldest[2]) + window - now
  end
end
return {admitted, wait}
"""


class RedisRateLimiter:
    def __init__(self, pipe: RedisPipe, breaker: RedisBreaker, limit: int, window_s: float) -> None:
        self._breaker = breaker
        self._limit = limit
        self._window_us = int(window_s * 1_000_000)
        self._acquire = pipe.script(_ACQUIRE)
        self._local = LocalRateLimiter(limit, window_s)
        self._batches: dict[UUID, list[asyncio.Future[RateDecision]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    async def acquire(self, merchant_id: UUID) -> RateDecision:
        if not self._breaker.allows():
            return await self._local.acquire(merchant_id)
        waiter: asyncio.Future[RateDecision] = asyncio.get_running_loop().create_future()
        batch = self._batches.get(merchant_id)
        if batch is None:
            # the flush runs on the next loop turn, after the requests arriving in this one joined
            self._batches[merchant_id] = [waiter]
            task = asyncio.create_task(self._flush(merchant_id))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        else:
            batch.append(waiter)
        return await waiter

    async def _flush(self, merchant_id: UUID) -> None:
        batch = self._batches.pop(merchant_id)
        try:
            reply = await self._acquire(
                keys=[redis_keys.rate_limit(merchant_id)],
                args=[self._limit, self._window_us, unique_token(), redis_keys.RATE_LIMIT_TTL_S, len(batch)],
            )
            assert isinstance(reply, list)
            admitted, wait_us = reply
        except REDIS_FAILURES as exc:
            self._breaker.failed("rate_limit", exc)
            decisions = [await self._local.acquire(merchant_id) for _ in batch]
        except BaseException as exc:  # never leave a request waiting forever
            for waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        else:
            self._breaker.succeeded()
            refused = RateDecision(False, int(wait_us) / 1_000_000, "redis")
            allowed = RateDecision(True, limiter="redis")
            decisions = [allowed if i < int(admitted) else refused for i in range(len(batch))]
        for waiter, decision in zip(batch, decisions, strict=True):
            if not waiter.done():  # a cancelled RPC still used its slot, as it would unbatched
                waiter.set_result(decision)
