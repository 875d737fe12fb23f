"""Composition root: settings -> pools and clients -> adapters -> use cases -> servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health
from redis.asyncio import Redis

from campaign_service import metrics
from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.embedded import EmbeddedDatabase, start_embedded
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_counts import refresh_tier_counts
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.adapters.redis.client import RedisBreaker, create_client, ping
from campaign_service.adapters.redis.limiter import RedisRateLimiter
from campaign_service.api.http import Check, build_http_app
from campaign_service.api.interceptors import RateLimitInterceptor
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.server import build_grpc_server, set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.config import Settings
from campaign_service.service.ports import RateLimiter, ViewCache
from campaign_service.service.reads import NoCache, TierReads
from campaign_service.service.tiers import TierService

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DatabaseTarget:
    app_dsn: str
    owner_dsn: str
    embedded: EmbeddedDatabase | None = None


async def database_target(settings: Settings) -> DatabaseTarget:
    """The configured PostgreSQL, or the embedded one started (and provisioned) on demand."""
    if settings.embedded_db:
        db = await start_embedded(settings.data_dir)
        return DatabaseTarget(db.app_dsn, db.owner_dsn, db)
    return DatabaseTarget(settings.app_dsn(), settings.owner_dsn())


async def run_migrations(owner_dsn: str) -> list[str]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


class UnsafeDatabaseRole(Exception):
    pass


async def check_app_role(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    """Refuses to serve as a role for which Row-Level Security would not apply."""
    row = await pool.fetchrow(
        "SELECT r.rolsuper, r.rolbypassrls, EXISTS (SELECT 1 FROM pg_tables t"
        " WHERE t.tablename = 'vip_tiers' AND t.tableowner = current_user) AS owner"
        " FROM pg_roles r WHERE r.rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"] or row["owner"]:
        raise UnsafeDatabaseRole(
            "CAMPAIGN_DB_USER: the service role must not be superuser, BYPASSRLS or the table owner"
        )


StopHook = Callable[[], Awaitable[None]]
_HOOK_TIMEOUT_S = 5.0


@dataclass
class App:
    settings: Settings
    pool: asyncpg.Pool[asyncpg.Record]
    tiers: TierService
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    http_runner: web.AppRunner
    grpc_port: int = 0
    http_port: int = 0
    draining: bool = False
    # Run in order after in-flight RPCs have finished and before the pools close: the place for
    # the outbox relay's final flush and the consumer's last offset commit (each bounded).
    drain_hooks: list[StopHook] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closers: list[StopHook] = field(default_factory=list)

    @property
    def stop_bound_s(self) -> float:
        """The longest `stop` may take: delay + RPC grace + bounded hooks and closes."""
        return self.settings.shutdown_delay_s + self.settings.shutdown_grace_s + 10.0

    async def stop(self) -> None:
        """SIGTERM path: not ready -> (delay) -> refuse new RPCs, drain in-flight -> hooks -> close."""
        s = self.settings
        self.draining = True
        await set_serving(self.health, False)
        log.info("shutting down", delay_s=s.shutdown_delay_s, grace_s=s.shutdown_grace_s)
        if s.shutdown_delay_s:
            await asyncio.sleep(s.shutdown_delay_s)
        # New RPCs get UNAVAILABLE from here; in-flight ones have `grace` seconds, then are cancelled.
        await self.grpc_server.stop(s.shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self.drain_hooks:
            await _run_bounded("drain hook", hook)
        await self.http_runner.cleanup()
        try:
            await asyncio.wait_for(self.pool.close(), _HOOK_TIMEOUT_S)
        except TimeoutError:
            self.pool.terminate()
        for close in reversed(self._closers):
            await _run_bounded("closer", close)
        log.info("stopped")


async def _run_bounded(what: str, step: StopHook) -> None:
    """One shutdown step; its failure is logged and does not keep the others from running."""
    try:
        await asyncio.wait_for(step(), _HOOK_TIMEOUT_S)
    except Exception:  # shutdown must go on; the failure is logged with its trace
        log.exception("shutdown step failed", step=what)


@dataclass
class RedisParts:
    """What sits on Redis, or its in-process stand-ins when REDIS_HOST is not set."""

    cache: ViewCache
    limiter: RateLimiter | None  # None: the rate limit is off
    client: Redis | None = None
    breaker: RedisBreaker | None = None

    def checks(self) -> list[Check]:
        """Redis readiness, non-critical: lookups go to PostgreSQL while it is down."""
        client, breaker, cache = self.client, self.breaker, self.cache
        if client is None or breaker is None:
            return []

        async def redis_check() -> str | None:
            problem = await ping(client, breaker)
            if problem is None and isinstance(cache, RedisViewCache) and cache.pending:
                return f"{cache.pending} cache invalidations pending; cache bypassed"
            return problem

        return [Check("redis", redis_check, critical=False)]


def redis_parts(settings: Settings) -> RedisParts:
    client = create_client(settings) if settings.redis_host else None
    breaker = RedisBreaker(settings.redis_retry_after_ms / 1000) if client is not None else None
    cache: ViewCache
    backend = settings.cache_backend
    if backend == "redis" and client is not None and breaker is not None:
        cache = RedisViewCache(client, breaker, settings.cache_ttl_s)
    elif backend == "memory":
        cache = MemoryViewCache(settings.cache_ttl_s, settings.cache_memory_max_bytes)
    else:
        cache = NoCache()
    limiter: RateLimiter | None = None
    window_s = settings.rate_limit_window_ms / 1000
    if settings.rate_limit_requests and client is not None and breaker is not None:
        limiter = RedisRateLimiter(client, breaker, settings.rate_limit_requests, window_s)
    elif settings.rate_limit_requests:
        limiter = LocalRateLimiter(settings.rate_limit_requests, window_s)
    log.info(
        "cache and rate limit",
        cache=backend,
        rate_limit=f"{settings.rate_limit_requests}/{settings.rate_limit_window_ms}ms" if limiter else "off",
        rate_limit_shared=isinstance(limiter, RedisRateLimiter),
    )
    return RedisParts(cache, limiter, client, breaker)


async def build_app(settings: Settings) -> App:
    target = await database_target(settings)
    if settings.migrate_on_start:
        applied = await run_migrations(target.owner_dsn)
        if applied:
            log.info("migrations applied", migrations=applied)
    pool = await create_pool(
        target.app_dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        connect_timeout_s=settings.db_connect_timeout_s,
    )
    await check_app_role(pool)
    parts = redis_parts(settings)
    tiers = TierService(PgUnitOfWork(pool, acquire_timeout_s=settings.db_connect_timeout_s), [parts.cache])
    reads = TierReads(tiers, parts.cache, render_tier, render_tiers)
    server, health_servicer = build_grpc_server(
        CampaignServicer(tiers, reads),
        extra_interceptors=[RateLimitInterceptor(parts.limiter)] if parts.limiter else [],
        max_message_bytes=settings.grpc_max_message_bytes,
    )
    grpc_port = server.add_insecure_port(f"{settings.bind_host}:{settings.grpc_port}")

    async def db_ready() -> str | None:
        async with pool.acquire(timeout=2) as conn:
            missing = await migrations.pending(conn)
        metrics.DB_UP.set(1)
        return f"migrations pending: {', '.join(missing)}" if missing else None

    async def db_check() -> str | None:
        try:
            return await db_ready()
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            metrics.DB_UP.set(0)
            return f"unreachable ({type(exc).__name__})"

    app_ref: list[App] = []
    http_app = build_http_app(
        [Check("postgres", db_check), *parts.checks()], draining=lambda: bool(app_ref) and app_ref[0].draining
    )
    runner = web.AppRunner(http_app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.http_port)
    await site.start()
    http_port = runner.addresses[0][1] if runner.addresses else settings.http_port
    await server.start()
    await set_serving(health_servicer, True)
    app = App(settings, pool, tiers, server, health_servicer, runner, grpc_port, http_port)
    app_ref.append(app)
    app._tasks.append(
        asyncio.create_task(
            refresh_tier_counts(pool, settings.tier_counts_top_n, settings.tier_counts_interval_s),
            name="tier-counts",
        )
    )
    if isinstance(parts.cache, RedisViewCache):
        interval_s = settings.redis_retry_after_ms / 1000
        app._tasks.append(asyncio.create_task(parts.cache.redeliver_forever(interval_s), name="cache-redelivery"))
    if parts.client is not None:
        app._closers.append(parts.client.aclose)
    if target.embedded is not None:
        app._closers.append(_stopper(target.embedded))
    log.info("serving", grpc_port=grpc_port, http_port=http_port, embedded_db=settings.embedded_db)
    return app


def _stopper(db: EmbeddedDatabase) -> Any:
    async def stop() -> None:
        await asyncio.to_thread(db.server.cleanup)

    return stop
