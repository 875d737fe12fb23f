"""The per-merchant rate limit shared by every instance through `rate_limit:{merchant_id}:campaign`,
falling back to the per-instance limiter while Redis is unavailable."""

from __future__ import annotations

import uuid
from uuid import UUID

from redis.asyncio import Redis

from campaign_service import keys
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.redis.client import REDIS_FAILURES, RedisBreaker
from campaign_service.service.ports import RateDecision

# A sliding-window log in a sorted set, atomic in one script and timed by Redis's clock (one clock
# for every instance). KEYS[1]; ARGV: limit, window (µs), unique member, key TTL (s).
# Returns 0 when the request is admitted, else the µs until the oldest request leaves the window.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 0
"""


class RedisRateLimiter:
    def __init__(self, client: Redis, breaker: RedisBreaker, limit: int, window_s: float) -> None:
        self._breaker = breaker
        self._limit = limit
        self._window_us = int(window_s * 1_000_000)
        self._acquire = client.register_script(_ACQUIRE)
        self._local = LocalRateLimiter(limit, window_s)

    async def acquire(self, merchant_id: UUID) -> RateDecision:
        if not self._breaker.allows():
            return await self._local.acquire(merchant_id)
        try:
            wait_us = await self._acquire(
                keys=[keys.rate_limit(merchant_id)],
                args=[self._limit, self._window_us, uuid.uuid4().hex, keys.RATE_LIMIT_TTL_S],
            )
        except REDIS_FAILURES as exc:
            self._breaker.failed("rate_limit", exc)
            return await self._local.acquire(merchant_id)
        self._breaker.succeeded()
        if wait_us == 0:
            return RateDecision(True, limiter="redis")
        return RateDecision(False, int(wait_us) / 1_000_000, "redis")
