"""The Redis client (bounded timeouts, no hidden retries) and the breaker that makes a dead or slow
Redis cost one timeout per cool-down instead of one per request."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from campaign_service import metrics
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.config import Settings

log = structlog.get_logger(__name__)

# What a Redis call raises when Redis is down, slow, full or restarting.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)


# Tokens unique across every instance and restart (cache fill tickets, rate-limit entries): a
# random prefix drawn once per process and a counter, so a lookup pays no system call for one.
_TOKEN_PREFIX = os.urandom(12).hex()
_TOKEN_COUNTER = itertools.count()


def unique_token() -> str:
    return f"{_TOKEN_PREFIX}{next(_TOKEN_COUNTER):x}"


# The redis-py client of the calls off the request path (invalidation, processed markers, health).
RedisClient = Redis | RedisCluster


def create_client(settings: Settings) -> RedisClient:
    """A pooled client; waiting for a free connection is bounded like every command."""
    timeout_s = settings.redis_timeout_ms / 1000
    if settings.redis_cluster:
        assert settings.redis_host is not None
        # The other nodes are found from this one; a command is retried once on a connection
        # error, after reading the slot map again (a failover), never more.
        return RedisCluster(
            host=settings.redis_host,
            port=settings.redis_port,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=settings.redis_max_connections,
            retry=Retry(NoBackoff(), 1),
            client_name="campaign-service",
        )
    pool = BlockingConnectionPool(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password.get_secret_value() if settings.redis_password else None,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=settings.redis_max_connections,
        timeout=timeout_s,
        # A timeout is not retried (that would multiply the bound; the breaker decides instead),
        # but a connection error once, on a new connection: a pooled connection that a restart of
        # Redis closed fails its next command at once, and each such failure opened the breaker
        # (the fault matrix saw renames go pending seconds after Redis was back).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name="campaign-service",
    )
    return Redis.from_pool(pool)


def create_pipe(settings: Settings) -> RedisPipe:
    """The pipelined connection of the per-request calls (cache lookups and fills, rate limit)."""
    assert settings.redis_host is not None
    return RedisPipe(
        settings.redis_host,
        settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password.get_secret_value() if settings.redis_password else None,
        timeout_s=settings.redis_timeout_ms / 1000,
        cluster=settings.redis_cluster,
    )


class RedisBreaker:
    """After a failed call, `allows()` is False for `retry_after_s`; callers fall back meanwhile
    (PostgreSQL for reads, the local limiter for the rate limit)."""

    def __init__(self, retry_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._open_until = 0.0
        self._up = True
        metrics.REDIS_UP.set(1)

    def allows(self) -> bool:
        return self._clock() >= self._open_until

    def failed(self, operation: str, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(operation).inc()
        if self._up:
            # Once per outage, not once per request.
            log.warning(
                "redis unavailable; serving without it",
                operation=operation,
                error=type(exc).__name__,
                detail=str(exc)[:160],  # e.g. "No connection available." (pool wait) vs a refused connect
            )
            self._up = False
            metrics.REDIS_UP.set(0)
        self._open_until = self._clock() + self._retry_after_s

    def succeeded(self) -> None:
        if not self._up:
            log.info("redis available again")
            self._up = True
            metrics.REDIS_UP.set(1)


async def ping(client: RedisClient, breaker: RedisBreaker) -> str | None:
    """Readiness: None when Redis answers, else a short reason."""
    try:
        if isinstance(client, RedisCluster):
            # The masters only: a replica that is down costs nothing until its master fails too.
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await client.ping()
    except REDIS_FAILURES as exc:
        breaker.failed("ping", exc)
        return f"unreachable ({type(exc).__name__}); serving from PostgreSQL"
    breaker.succeeded()
    return None
