"""What sits on Redis (view cache, shared rate limit), or its in-process stand-ins when REDIS_HOST
is not set."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.postgres.cache_epoch import PgCacheEpoch
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.adapters.redis.client import RedisBreaker, RedisClient, create_client, create_pipe, ping
from campaign_service.adapters.redis.limiter import RedisRateLimiter
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.api.http import Check
from campaign_service.config import ConfigError, Settings
from campaign_service.service.ports import RateLimiter, ViewCache
from campaign_service.service.reads import NoCache
from campaign_service.wiring import lifetime
from campaign_service.wiring.database import Pool

log = structlog.get_logger(__name__)


@dataclass
class RedisParts:
    cache: ViewCache
    limiter: RateLimiter | None  # None: the rate limit is off
    client: RedisClient | None = None
    pipe: RedisPipe | None = None
    breaker: RedisBreaker | None = None

    def checks(self) -> list[Check]:
        """Redis readiness, non-critical: lookups go to PostgreSQL while it is down."""
        client, breaker, cache = self.client, self.breaker, self.cache
        if client is None or breaker is None:
            return []

        async def redis_check() -> str | None:
            problem = await ping(client, breaker)
            if problem is None and isinstance(cache, RedisViewCache) and not cache.trusted:
                return "cache not confirmed against PostgreSQL yet; bypassed"
            return problem

        return [Check("redis", redis_check, critical=False)]


def _parts(settings: Settings, epoch_pool: Pool | None) -> RedisParts:
    client = create_client(settings) if settings.redis_host else None
    pipe = create_pipe(settings) if settings.redis_host else None
    breaker = RedisBreaker(settings.redis_retry_after_ms / 1000) if client is not None else None
    cache: ViewCache
    backend = settings.cache_backend
    if backend == "redis" and client is not None and pipe is not None and breaker is not None:
        if epoch_pool is None:  # the durable cache epoch lives in PostgreSQL (adapters/redis/cache.py)
            raise ConfigError("CAMPAIGN_CACHE: the Redis cache needs the database for its epoch")
        cache = RedisViewCache(
            pipe,
            breaker,
            PgCacheEpoch(epoch_pool),
            settings.cache_ttl_s,
            lease_s=settings.cache_epoch_lease_ms / 1000,
            block_ttl_s=2 * (settings.db_statement_timeout_ms // 1000 + 2),  # twice a COMMIT's bound
        )
    elif backend == "memory":
        cache = MemoryViewCache(settings.cache_ttl_s, settings.cache_memory_max_bytes)
    else:
        cache = NoCache()
    limiter: RateLimiter | None = None
    window_s = settings.rate_limit_window_ms / 1000
    if settings.rate_limit_requests and pipe is not None and breaker is not None:
        limiter = RedisRateLimiter(pipe, breaker, settings.rate_limit_requests, window_s)
    elif settings.rate_limit_requests:
        limiter = LocalRateLimiter(settings.rate_limit_requests, window_s)
    log.info(
        "cache and rate limit",
        cache=backend,
        rate_limit=f"{settings.rate_limit_requests}/{settings.rate_limit_window_ms}ms" if limiter else "off",
        rate_limit_shared=isinstance(limiter, RedisRateLimiter),
    )
    return RedisParts(cache, limiter, client, pipe, breaker)


@contextlib.asynccontextmanager
async def opened(settings: Settings, epoch_pool: Pool | None) -> AsyncIterator[RedisParts]:
    """The cache and limiter of `settings`; the Redis connections close on leaving. The Redis
    cache confirms its epoch against PostgreSQL (`epoch_pool`) before it is trusted."""
    parts = _parts(settings, epoch_pool)
    try:
        if isinstance(parts.cache, RedisViewCache):
            try:
                await parts.cache.confirm()
            except Exception as exc:  # whatever failed, the confirmation task keeps trying
                log.warning("redis cache not confirmed at start; bypassed until it is", error=type(exc).__name__)
        yield parts
    finally:
        for name, part in (("redis pipe", parts.pipe), ("redis client", parts.client)):
            if part is not None:
                await lifetime.bounded(name, part.aclose)


def confirmation(cache: ViewCache) -> contextlib.AbstractAsyncContextManager[object]:
    """For the Redis cache: its epoch is kept confirmed against PostgreSQL in the background while
    the block runs (a lookup trusts Redis only within the lease)."""
    if not isinstance(cache, RedisViewCache):
        return contextlib.nullcontext()
    return lifetime.background("cache-confirmation", cache.keep_confirmed())
