"""Composition root: settings -> pools and clients -> adapters -> use cases -> servers.

`build_app` opens everything in order on one `AsyncExitStack`, so a failure at any step closes
what the steps before it opened, in reverse; `App.stop` unwinds the same stack. Opening order is
therefore the reverse of the shutdown order: gRPC (no new RPCs; grace for those in flight) ->
background tasks -> consumer -> relay -> Kafka producer -> HTTP -> pool -> embedded PostgreSQL
-> Redis -> token verification -> tracing. Each adapter family builds itself in `campaign_service.wiring`.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

import structlog
from grpc_health.v1 import health

from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.adapters.postgres.scheduled import PgScheduledChanges
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import PgTierChangeEngine
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.http import Check
from campaign_service.api.interceptors import MethodInterceptor, RateLimitInterceptor
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.server import set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.config import Settings
from campaign_service.service.ports import RateLimiter, TokenVerifier, ViewCache
from campaign_service.service.progression_api import ProgressionApi
from campaign_service.service.reads import TierReads
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.tier_changes import TierChangePreviewer
from campaign_service.service.tiers import TierService
from campaign_service.service.unit_of_work import UnitOfWork
from campaign_service.wiring import auth, database, redis, servers, tracing
from campaign_service.wiring.events import activator, downgrade_warnings, pipeline, scheduler, tier_change_jobs

log = structlog.get_logger(__name__)


class Events(Protocol):
    """The event side running beside the servers (outbox relay, customer.created consumer)."""

    def checks(self) -> list[Check]: ...

    def running(self) -> AbstractAsyncContextManager[object]:
        """Runs while the block runs; leaving it drains what is in hand."""
        ...


@dataclass
class App:
    settings: Settings
    tiers: TierService
    health: health.aio.HealthServicer
    grpc_port: int
    http_port: int
    _draining: asyncio.Event
    _lifetime: AsyncExitStack  # everything build_app opened; unwound by stop()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def stop_bound_s(self) -> float:
        """The longest `stop` may take: delay + RPC grace + bounded drains and closes."""
        return self.settings.shutdown_delay_s + self.settings.shutdown_grace_s + 10.0

    async def stop(self) -> None:
        """SIGTERM path: not ready -> (delay) -> refuse new RPCs, drain in-flight -> drains -> close."""
        s = self.settings
        self._draining.set()  # /ready answers 503 from here
        await set_serving(self.health, False)
        log.info("shutting down", delay_s=s.shutdown_delay_s, grace_s=s.shutdown_grace_s)
        if s.shutdown_delay_s:  # the load balancer's traffic in flight still gets answers
            await asyncio.sleep(s.shutdown_delay_s)
        await self._lifetime.aclose()
        log.info("stopped")

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def build_app(
    settings: Settings,
    *,
    uow: UnitOfWork | None = None,
    cache: ViewCache | None = None,
    limiter: RateLimiter | None = None,
    verifier: TokenVerifier | None = None,
    events: Events | None = None,
) -> App:
    """The service, serving. A port not given is built from `settings` (a rate limit of 0 turns
    the limiter off); with `uow` given and no Kafka configured, no database is opened."""
    # Without a verifier given, a production configuration that names none is refused here.
    auth_mode = settings.auth_mode() if verifier is None else None
    tls = servers.tls_credentials(settings)
    if settings.events_on:
        settings.event_bus_address()  # refuse an incomplete event configuration before starting anything
    draining = asyncio.Event()
    async with AsyncExitStack() as stack:
        tracer = await stack.enter_async_context(tracing.tracer(settings))  # closed last: drains' spans go out
        if verifier is None:
            assert auth_mode is not None
            verifier = await stack.enter_async_context(auth.verifier(settings, auth_mode))
        checks: list[Check] = []
        pool = relay_pool = None
        listen_dsn = ""
        if uow is None or (events is None and settings.events_on):
            target = await stack.enter_async_context(database.target(settings))
            if settings.migrate_on_start and (applied := await database.migrate(target.owner_dsn)):
                log.info("migrations applied", migrations=applied)
            pool = await stack.enter_async_context(database.pool(target.app_dsn, settings))
            await database.check_app_role(pool)
            relay_pool = await stack.enter_async_context(database.relay_pool(settings, target.relay_dsn))
            checks.append(database.readiness(pool))
            uow = uow or PgUnitOfWork(pool, acquire_timeout_s=settings.db_connect_timeout_s)
            listen_dsn = target.relay_dsn
        stores = await stack.enter_async_context(redis.opened(settings, pool))
        cache = stores.cache if cache is None else cache
        limiter = stores.limiter if limiter is None else limiter
        checks += stores.checks()
        probes = await stack.enter_async_context(servers.http(settings, checks, draining.is_set))

        if events is None and pool is not None and relay_pool is not None and settings.events_on:
            side = pipeline(settings, relay_pool, listen_dsn, stores.client, stores.breaker, pool, tracer)
            events = await stack.enter_async_context(side)
        if events is not None:
            checks += events.checks()
            await stack.enter_async_context(events.running())
        else:
            log.info("KAFKA_BROKER is not set: events stay in the outbox (see `campaign-service outbox list`)")
        # Scheduled (effective-dated) changes (issue 14) need the database; on fakes reads are as stored.
        dated = None
        if pool is not None and relay_pool is not None:
            await stack.enter_async_context(database.tier_counts(relay_pool, settings))
            await stack.enter_async_context(scheduler(settings, pool))
            await stack.enter_async_context(downgrade_warnings(settings, pool))
            await stack.enter_async_context(tier_change_jobs(settings, pool))
            dated_store = PgScheduledChanges(pool, settings.db_connect_timeout_s)
            dated = ScheduledChanges(dated_store, [cache])
            await stack.enter_async_context(activator(settings, dated, dated_store))
        await stack.enter_async_context(redis.confirmation(cache))

        tiers = TierService(uow, [cache])
        reads = TierReads(tiers, cache, render_tier, render_tiers, dated=dated, fill_ttl_s=settings.cache_ttl_s)
        # Progression reads and programme writes (issue 13) need the database; on fakes they answer UNAVAILABLE.
        progression = ProgressionApi(PgProgressionApi(pool, settings.db_connect_timeout_s)) if pool else None
        previews = TierChangePreviewer(PgTierChangeEngine(pool, settings.db_connect_timeout_s)) if pool else None
        # Authentication first: only callers allowed for a merchant spend its request budget.
        interceptors: list[MethodInterceptor] = [AuthInterceptor(verifier)]
        if limiter is not None:
            interceptors.append(RateLimitInterceptor(limiter))
        http_port = await probes.listen()
        grpc = await stack.enter_async_context(
            servers.grpc_server(
                settings, tls, CampaignServicer(tiers, reads, progression, previews, dated), interceptors, tracer
            )
        )
        lifetime = stack.pop_all()  # started: from here the App owns what was opened
    log.info(
        "serving",
        grpc_port=grpc.port,
        http_port=http_port,
        embedded_db=settings.embedded_db and pool is not None,
        auth=auth_mode or "given",
        tls=servers.tls_mode(tls),
    )
    return App(settings, tiers, grpc.health, grpc.port, http_port, draining, lifetime)
