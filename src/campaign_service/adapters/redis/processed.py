"""The processed-events fast path on Redis: `processed:{merchant_id}:{event_id}`, 24 h.

Never the source of truth: when Redis fails, `seen` answers "none" (the database dedupes) and
`remember` is skipped; both count the failure. A batch costs one round trip either way. It shares
the RedisBreaker of the read cache and the rate limit: after a failure (a timeout on a slow Redis)
the fast path is skipped for the breaker's cool-down, so an outage costs one timeout per cool-down
instead of two per consumer batch (`seen` and `remember`).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from campaign_service import metrics, redis_keys
from campaign_service.adapters.redis.client import REDIS_FAILURES, RedisBreaker, RedisClient


class RedisProcessedEvents:
    def __init__(self, client: RedisClient, breaker: RedisBreaker, ttl_s: int = redis_keys.PROCESSED_TTL_S) -> None:
        self._redis = client
        self._breaker = breaker
        self._ttl = ttl_s

    async def seen(self, events: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        if not events or not self._breaker.allows():
            return set()
        try:
            # GETs in a pipeline rather than one MGET: the keys of a batch lie in the slots of
            # several merchants, and a cluster pipeline sends each node its own (one round trip).
            async with self._redis.pipeline(transaction=False) as pipe:
                for merchant, event in events:
                    pipe.get(redis_keys.processed(merchant, event))
                values = await pipe.execute()
        except REDIS_FAILURES as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("seen").inc()
            self._breaker.failed("processed_seen", exc)
            return set()
        self._breaker.succeeded()
        return {event for (_, event), value in zip(events, values, strict=True) if value is not None}

    async def remember(self, events: Sequence[tuple[UUID, UUID]]) -> None:
        if not events or not self._breaker.allows():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for merchant, event in events:
                    pipe.set(redis_keys.processed(merchant, event), b"1", ex=self._ttl)
                await pipe.execute()
        except REDIS_FAILURES as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("remember").inc()
            self._breaker.failed("processed_remember", exc)
            return
        self._breaker.succeeded()
