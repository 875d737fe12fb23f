"""The processed-events fast path on Redis: `processed:{merchant_id}:{event_id}`, 24 h.

Never the source of truth: when Redis fails, `seen` answers "none" (the database dedupes) and
`remember` is skipped; both count the failure. A batch costs one round trip either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from campaign_service import keys, metrics

log = structlog.get_logger(__name__)


class RedisProcessedEvents:
    def __init__(self, client: aioredis.Redis, ttl_s: int = keys.PROCESSED_TTL_S) -> None:
        self._redis = client
        self._ttl = ttl_s

    async def seen(self, events: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        if not events:
            return set()
        try:
            values = await self._redis.mget([keys.processed(merchant, event) for merchant, event in events])
        except (RedisError, OSError) as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("seen").inc()
            log.debug("processed-events fast path unavailable", error=type(exc).__name__)
            return set()
        return {event for (_, event), value in zip(events, values, strict=True) if value is not None}

    async def remember(self, events: Sequence[tuple[UUID, UUID]]) -> None:
        if not events:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for merchant, event in events:
                    pipe.set(keys.processed(merchant, event), b"1", ex=self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("remember").inc()
            log.debug("processed-events fast path unavailable", error=type(exc).__name__)
