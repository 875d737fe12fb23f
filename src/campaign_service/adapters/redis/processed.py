"""The processed-events fast path on Redis: `processed:{merchant_id}:{event_id}`, 24 h.

Never the source of truth: when Redis fails, `seen` answers False (the database dedupes) and
`remember` is skipped; both count the failure.
"""

from __future__ import annotations

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

    async def seen(self, merchant_id: UUID, event_id: UUID) -> bool:
        try:
            return bool(await self._redis.exists(keys.processed(merchant_id, event_id)))
        except (RedisError, OSError) as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("seen").inc()
            log.debug("processed-events fast path unavailable", error=type(exc).__name__)
            return False

    async def remember(self, merchant_id: UUID, event_id: UUID) -> None:
        try:
            await self._redis.set(keys.processed(merchant_id, event_id), b"1", ex=self._ttl)
        except (RedisError, OSError) as exc:
            metrics.PROCESSED_CACHE_ERRORS.labels("remember").inc()
            log.debug("processed-events fast path unavailable", error=type(exc).__name__)
