"""Composition root: settings -> pools and clients -> adapters -> use cases -> servers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health
from opentelemetry.trace import Tracer
from redis.asyncio import Redis

from campaign_service import metrics, topics
from campaign_service.adapters.auth.auth_service import AuthServiceVerifier
from campaign_service.adapters.auth.cache import CachingVerifier
from campaign_service.adapters.auth.dev import DEV_ALGORITHM, DEV_ISSUER, dev_key_set, dev_signing_key
from campaign_service.adapters.auth.keys import (
    FileKeys,
    KeySource,
    StaticKeys,
    UrlKeys,
    parse_jwks,
    parse_pem_public_key,
)
from campaign_service.adapters.auth.local import ClaimRules, LocalJwtVerifier
from campaign_service.adapters.kafka.consumer import KafkaEventSubscriber, consumer_config
from campaign_service.adapters.kafka.producer import KafkaProducer, producer_config
from campaign_service.adapters.kafka.publisher import KafkaEventPublisher
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.cache_epoch import PgCacheEpoch
from campaign_service.adapters.postgres.embedded import EmbeddedDatabase, start_embedded
from campaign_service.adapters.postgres.outbox import PgOutbox, PgOutboxListener
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_counts import refresh_tier_counts
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.adapters.redis.client import RedisBreaker, create_client, create_pipe, ping
from campaign_service.adapters.redis.limiter import RedisRateLimiter
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.adapters.redis.processed import RedisProcessedEvents
from campaign_service.adapters.schema_registry import RegistryRejected, RegistryUnavailable, registry_client
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.http import Check, build_http_app
from campaign_service.api.interceptors import RateLimitInterceptor
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.server import build_grpc_server, set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.api.tls import ReloadingServerCredentials, TlsFilesError
from campaign_service.backoff import Backoff, supervise
from campaign_service.config import AuthMode, ConfigError, Settings
from campaign_service.events.customer_created import CustomerCreatedHandler
from campaign_service.events.customer_deleted import CustomerDeletedHandler
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.events.ports import BatchHandler, EventPublisher
from campaign_service.events.relay import OutboxRelay, RelaySettings
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings
from campaign_service.events.tracing import TracedPublisher, traced_batches
from campaign_service.service.downgrade_warnings import DowngradeWarnings
from campaign_service.service.ports import RateLimiter, TokenVerifier, ViewCache
from campaign_service.service.progression_api import ProgressionApi
from campaign_service.service.reads import NoCache, TierReads
from campaign_service.service.tiers import TierService
from campaign_service.telemetry import start_tracing

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DatabaseTarget:
    app_dsn: str
    owner_dsn: str
    relay_dsn: str  # the outbox relay and tier counts: a role the request path does not hold
    embedded: EmbeddedDatabase | None = None


async def database_target(settings: Settings) -> DatabaseTarget:
    """The configured PostgreSQL, or the embedded one started (and provisioned) on demand."""
    if settings.embedded_db:
        db = await start_embedded(settings.data_dir)
        return DatabaseTarget(db.app_dsn, db.owner_dsn, db.relay_dsn, db)
    return DatabaseTarget(settings.app_dsn(), settings.owner_dsn(), settings.relay_dsn())


async def run_migrations(owner_dsn: str) -> list[str]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


class UnsafeDatabaseRole(Exception):
    pass


async def check_app_role(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    """Refuses to serve as a role for which Row-Level Security would not apply, or that may
    assume another role (the relay's sees every merchant's outbox)."""
    row = await pool.fetchrow(
        "SELECT r.rolsuper, r.rolbypassrls, EXISTS (SELECT 1 FROM pg_tables t"
        " WHERE t.tablename = 'vip_tiers' AND t.tableowner = current_user) AS owner,"
        " (SELECT string_agg(g.rolname, ', ') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        "  WHERE m.member = r.oid) AS member_of"
        " FROM pg_roles r WHERE r.rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"] or row["owner"]:
        raise UnsafeDatabaseRole(
            "CAMPAIGN_DB_USER: the service role must not be superuser, BYPASSRLS or the table owner"
        )
    if row["member_of"]:
        raise UnsafeDatabaseRole(
            f"CAMPAIGN_DB_USER: the service role must be a member of no other role; it is a member of"
            f" {row['member_of']} (REVOKE {row['member_of']} FROM <service role>, as a superuser)"
        )


async def open_relay_pool(settings: Settings, dsn: str) -> asyncpg.Pool[asyncpg.Record]:
    """The relay's own small pool (outbox relay, tier counts), logged in as its own role."""
    try:
        return await create_pool(
            dsn,
            min_size=1,
            max_size=3,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            connect_timeout_s=settings.db_connect_timeout_s,
        )
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise ConfigError(
            f"CAMPAIGN_RELAY_DB_USER: cannot log in as the relay's role ({type(exc).__name__}); provision it"
            " (deploy/postgres/init-campaign.sh) and set CAMPAIGN_RELAY_DB_PASSWORD or CAMPAIGN_RELAY_DB_DSN"
        ) from None


StopHook = Callable[[], Awaitable[None]]
_HOOK_TIMEOUT_S = 5.0


@dataclass
class Relay:
    """The outbox relay with what it owns: Kafka producer, schema registry client, LISTEN connection."""

    relay: OutboxRelay
    listener: PgOutboxListener
    producer: KafkaProducer
    codec: AvroWireCodec

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.listener.run(self.relay.wake, stop))
            tasks.create_task(self.relay.run(stop))

    async def close(self, flush_s: float = 10.0) -> None:
        await self.producer.close(flush_s)  # flush: nothing enqueued is dropped on a clean stop
        await self.codec.close()

    async def kafka_check(self) -> str | None:
        if self.relay.last_error:
            return f"publishing fails: {self.relay.last_error}"[:200]
        return "all brokers down" if self.producer.broker_down else None


def build_relay(
    settings: Settings, pool: asyncpg.Pool[asyncpg.Record], listen_dsn: str, tracer: Tracer | None = None
) -> Relay:
    broker, registry_url = settings.kafka()
    delivery_s = settings.kafka_delivery_timeout_ms / 1000
    codec = AvroWireCodec(registry_client(registry_url))
    producer = KafkaProducer(
        producer_config(
            broker,
            client_id=settings.kafka_client_id,
            delivery_timeout_ms=settings.kafka_delivery_timeout_ms,
            linger_ms=settings.kafka_linger_ms,
        )
    )
    publisher: EventPublisher = KafkaEventPublisher(producer, codec, delivery_timeout_s=delivery_s)
    if tracer is not None:
        publisher = TracedPublisher(publisher, tracer, system="kafka")
    relay = OutboxRelay(
        PgOutbox(pool, claim_hold_s=delivery_s + 15),
        publisher,
        RelaySettings(
            batch_size=settings.outbox_batch_size,
            poll_interval_s=settings.outbox_poll_interval_s,
            retention_s=settings.outbox_retention_hours * 3600,
            purge_interval_s=settings.outbox_purge_interval_s,
            processed_retention_s=settings.processed_retention_hours * 3600,
            backoff_max_s=settings.relay_backoff_max_s,
        ),
    )
    return Relay(relay, PgOutboxListener(listen_dsn), producer, codec)


async def register_schemas(codec: AvroWireCodec) -> None:
    """Registers the schemas of what we produce now so a registry problem shows at start-up
    (publishing retries anyway). The Core Service's customer.created subject is not ours to write."""
    try:
        await asyncio.wait_for(codec.register_all(), 10)
    except (RegistryUnavailable, RegistryRejected, TimeoutError) as exc:
        log.warning("schema registration failed; publishing retries it", error=str(exc))


@dataclass
class EventPipeline:
    """Relay and customer.created consumer running in the service process."""

    relay: Relay
    subscriber: KafkaEventSubscriber
    handler: BatchHandler
    points: tuple[KafkaEventSubscriber, BatchHandler] | None = None
    erasure: tuple[KafkaEventSubscriber, BatchHandler] | None = None  # customer.deleted
    _stop_consumer: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_relay: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        consume = functools.partial(self.subscriber.run, self.handler, self._stop_consumer)
        relay = functools.partial(self.relay.run, self._stop_relay)
        self._tasks = [
            asyncio.create_task(supervise("consumer", consume, self._stop_consumer), name="consumer"),
            asyncio.create_task(supervise("relay", relay, self._stop_relay), name="relay"),
        ]
        if self.points is not None:
            points = functools.partial(self.points[0].run, self.points[1], self._stop_consumer)
            self._tasks.insert(1, asyncio.create_task(supervise("points", points, self._stop_consumer), name="points"))
        if self.erasure is not None:
            erase = functools.partial(self.erasure[0].run, self.erasure[1], self._stop_consumer)
            self._tasks.insert(1, asyncio.create_task(supervise("erasure", erase, self._stop_consumer), name="erasure"))

    # Drain hooks, in this order, each well inside the App's per-hook bound.
    async def stop_consumer(self) -> None:
        """Finishes the batch in hand and commits its offsets, then leaves the group."""
        self._stop_consumer.set()
        await _bounded(self._tasks[:-1], 3.0)

    async def stop_relay(self) -> None:
        """Stops the relay loop, then one last pass for the rows the consumer just wrote."""
        self._stop_relay.set()
        await _bounded(self._tasks[-1:], 1.5)
        await self.relay.relay.drain(timeout_s=1.5)

    async def close(self) -> None:
        await self.relay.close(flush_s=2.0)


async def _bounded(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        log.warning("task did not stop in time; cancelling", task=t.get_name())
        t.cancel()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.error("task failed", task=t.get_name(), error=repr(t.exception()))


def build_events(
    settings: Settings,
    relay_pool: asyncpg.Pool[asyncpg.Record],
    listen_dsn: str,
    redis: Redis | None,
    breaker: RedisBreaker | None,
    pool: asyncpg.Pool[asyncpg.Record],
    tracer: Tracer | None = None,
) -> EventPipeline:
    """The relay (on its own role's pool) and the consumer (on the service's `pool`); `redis`
    (the service's client, with its breaker) backs the processed-events fast path; with a
    `tracer` (tracing on), publishing and consuming make spans (events/tracing.py)."""
    relay = build_relay(settings, relay_pool, listen_dsn, tracer)
    broker, _ = settings.kafka()
    subscriber = KafkaEventSubscriber(
        consumer_config(
            broker,
            group_id=settings.kafka_consumer_group,
            client_id=settings.kafka_client_id,
            session_timeout_ms=settings.kafka_session_timeout_ms,
        ),
        topics.CUSTOMER_CREATED,
        relay.codec.reader(topics.CUSTOMER_CREATED),
        relay.producer,
        topics.CUSTOMER_CREATED_DLQ,
        batch_size=settings.consumer_batch_size,
        retry=Backoff(0.2, 5.0),
    )
    processed = RedisProcessedEvents(redis, breaker) if redis is not None and breaker is not None else None
    handler: BatchHandler = CustomerCreatedHandler(
        PgUnitOfWork(pool), processed, concurrency=settings.consumer_concurrency
    ).batch
    if tracer is not None:
        handler = traced_batches(handler, tracer, system="kafka")
    points = KafkaEventSubscriber(
        consumer_config(
            broker,
            group_id=f"{settings.kafka_consumer_group}.points",
            client_id=settings.kafka_client_id,
            session_timeout_ms=settings.kafka_session_timeout_ms,
        ),
        topics.POINTS_RECORDED,
        relay.codec.reader(topics.POINTS_RECORDED),
        relay.producer,
        topics.POINTS_RECORDED_DLQ,
        batch_size=settings.points_batch_size,
        retry=Backoff(0.2, 5.0),
    )
    # No Redis fast path: the database dedupes each batch in one INSERT anyway; the fast path
    # would add two Redis round trips of up to a batch of keys each.
    points_handler: BatchHandler = PointsRecordedHandler(PgProgression(pool)).batch
    if tracer is not None:
        points_handler = traced_batches(points_handler, tracer, system="kafka")
    deleted = KafkaEventSubscriber(
        consumer_config(
            broker,
            group_id=f"{settings.kafka_consumer_group}.erasure",
            client_id=settings.kafka_client_id,
            session_timeout_ms=settings.kafka_session_timeout_ms,
        ),
        topics.CUSTOMER_DELETED,
        relay.codec.reader(topics.CUSTOMER_DELETED),
        relay.producer,
        topics.CUSTOMER_DELETED_DLQ,
        batch_size=settings.consumer_batch_size,
        retry=Backoff(0.2, 5.0),
    )
    erase_handler: BatchHandler = CustomerDeletedHandler(PgProgressionApi(pool)).batch
    if tracer is not None:
        erase_handler = traced_batches(erase_handler, tracer, system="kafka")
    return EventPipeline(relay, subscriber, handler, (points, points_handler), (deleted, erase_handler))


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
    pipe: RedisPipe | None = None
    breaker: RedisBreaker | None = None

    async def start(self) -> None:
        """Confirms the shared cache before serving (bypassed until it is; adapters/redis/cache.py)."""
        if isinstance(self.cache, RedisViewCache):
            try:
                await self.cache.confirm()
            except Exception as exc:  # the background task keeps trying
                log.warning("redis cache not confirmed at start; bypassed until it is", error=type(exc).__name__)

    def closers(self) -> list[Callable[[], Awaitable[None]]]:
        return [part.aclose for part in (self.client, self.pipe) if part is not None]

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


def redis_parts(settings: Settings, pool: asyncpg.Pool[asyncpg.Record]) -> RedisParts:
    client = create_client(settings) if settings.redis_host else None
    pipe = create_pipe(settings) if settings.redis_host else None
    breaker = RedisBreaker(settings.redis_retry_after_ms / 1000) if client is not None else None
    cache: ViewCache
    backend = settings.cache_backend
    if backend == "redis" and client is not None and pipe is not None and breaker is not None:
        cache = RedisViewCache(
            pipe,
            breaker,
            PgCacheEpoch(pool),
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


def _file_keys(path: Path, variable: str, kind: str) -> FileKeys:
    try:
        return FileKeys(path, parse_jwks if kind == "jwks" else parse_pem_public_key, kind)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{variable}: cannot use {path} ({type(exc).__name__})") from None


async def token_verifier(
    settings: Settings, mode: AuthMode, closers: list[StopHook], tasks: list[asyncio.Task[None]]
) -> TokenVerifier:
    """The verifier for `mode`, behind the verified-token cache; key refreshers start here."""
    if mode == "auth_service":
        assert settings.auth_host is not None
        channel = grpc.aio.insecure_channel(settings.auth_host)
        closers.append(channel.close)
        inner: TokenVerifier = AuthServiceVerifier(channel, settings.jwt_audience, settings.auth_timeout_s)
        return CachingVerifier(inner, settings.auth_cache_size, settings.auth_cache_max_ttl_s)
    rules = ClaimRules(
        settings.algorithms,
        settings.jwt_audience,
        settings.jwt_issuer,
        settings.jwt_leeway_s,
        settings.jwt_merchant_claim,
    )
    keys: FileKeys | UrlKeys | StaticKeys
    if mode == "jwks_file":
        assert settings.jwt_jwks_file is not None
        keys = _file_keys(settings.jwt_jwks_file, "CAMPAIGN_JWT_JWKS_FILE", "jwks")
    elif mode == "public_key":
        assert settings.jwt_public_key_file is not None
        keys = _file_keys(settings.jwt_public_key_file, "CAMPAIGN_JWT_PUBLIC_KEY_FILE", "public_key")
    elif mode == "jwks_url":
        assert settings.jwt_jwks_url is not None
        keys = UrlKeys(settings.jwt_jwks_url, settings.jwks_refresh_s, settings.auth_timeout_s)
        closers.append(keys.close)
        if not await keys.fetch():
            log.warning("JWKS URL not reachable at start; requests fail with UNAVAILABLE until it is")
    else:
        keys = StaticKeys(dev_key_set(dev_signing_key(settings.data_dir)))
        log.info("embedded default: tokens from `campaign-service dev-token --merchant <uuid>` (same data dir)")
        rules = ClaimRules((DEV_ALGORITHM,), settings.jwt_audience, DEV_ISSUER, settings.jwt_leeway_s)
    cache = CachingVerifier(LocalJwtVerifier(keys, rules), settings.auth_cache_size, settings.auth_cache_max_ttl_s)
    keys.subscribe(cache.clear)
    tasks.append(asyncio.create_task(_key_refresher(keys), name="token-keys"))
    return cache


async def _key_refresher(keys: KeySource) -> None:
    await keys.run()


def tls_credentials(settings: Settings) -> ReloadingServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        return ReloadingServerCredentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except (OSError, TlsFilesError) as exc:
        raise ConfigError(f"CAMPAIGN_TLS_CERT_FILE: cannot use the TLS files ({exc})") from None


def start_scheduler(settings: Settings, pool: asyncpg.Pool[asyncpg.Record]) -> list[asyncio.Task[None]]:
    """The deadline scheduler (tier downgrades) as a supervised task, unless switched off; cancelled
    at stop (a chunk in flight rolls back and is claimed again by the next pass)."""
    if not settings.scheduler_interval_s:
        return []
    progression = PgProgression(pool)
    scheduler = DeadlineScheduler(
        progression,
        progression,
        SchedulerSettings(chunk_size=settings.scheduler_chunk_size, interval_s=settings.scheduler_interval_s),
    )
    stop = asyncio.Event()
    run = functools.partial(scheduler.run, stop)
    return [asyncio.create_task(supervise("scheduler", run, stop), name="deadline-scheduler")]


def start_downgrade_warnings(settings: Settings, pool: asyncpg.Pool[asyncpg.Record]) -> list[asyncio.Task[None]]:
    """vip_tier.downgrade_scheduled warnings and the due-backlog gauges, on the scheduler's interval
    (off with it)."""
    if not settings.scheduler_interval_s:
        return []
    warnings = DowngradeWarnings(PgProgressionApi(pool), interval_s=settings.scheduler_interval_s)
    stop = asyncio.Event()
    run = functools.partial(warnings.run, stop)
    return [asyncio.create_task(supervise("downgrade-warnings", run, stop), name="downgrade-warnings")]


async def build_app(settings: Settings) -> App:
    auth_mode = settings.auth_mode()  # refuses a production configuration without a verifier
    tls = tls_credentials(settings)
    closers: list[StopHook] = []
    tracing = start_tracing(settings)
    tracer = tracing.tracer if tracing is not None else None
    tasks: list[asyncio.Task[None]] = []
    verifier = await token_verifier(settings, auth_mode, closers, tasks)
    if settings.kafka_broker:
        settings.kafka()  # refuse an incomplete event configuration before starting anything
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
    relay_pool = await open_relay_pool(settings, target.relay_dsn)
    closers.append(relay_pool.close)
    parts = redis_parts(settings, pool)
    await parts.start()
    tiers = TierService(PgUnitOfWork(pool, acquire_timeout_s=settings.db_connect_timeout_s), [parts.cache])
    reads = TierReads(tiers, parts.cache, render_tier, render_tiers)
    server, health_servicer = build_grpc_server(
        CampaignServicer(tiers, reads, ProgressionApi(PgProgressionApi(pool, settings.db_connect_timeout_s))),
        # Authentication first: only callers allowed for a merchant spend its request budget.
        extra_interceptors=[
            AuthInterceptor(verifier),
            *([RateLimitInterceptor(parts.limiter)] if parts.limiter else []),
        ],
        max_message_bytes=settings.grpc_max_message_bytes,
        tracer=tracer,
    )
    address = f"{settings.bind_host}:{settings.grpc_port}"
    grpc_port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)

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

    checks = [Check("postgres", db_check), *parts.checks()]
    events: EventPipeline | None = None
    if settings.kafka_broker:
        events = build_events(settings, relay_pool, target.relay_dsn, parts.client, parts.breaker, pool, tracer)
        await register_schemas(events.relay.codec)
        checks.append(Check("kafka", events.relay.kafka_check, critical=False))
    else:
        log.info("KAFKA_BROKER is not set: events stay in the outbox (see `campaign-service outbox list`)")
    app_ref: list[App] = []
    http_app = build_http_app(checks, draining=lambda: bool(app_ref) and app_ref[0].draining)
    runner = web.AppRunner(http_app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.http_port)
    await site.start()
    http_port = runner.addresses[0][1] if runner.addresses else settings.http_port
    await server.start()
    await set_serving(health_servicer, True)
    app = App(settings, pool, tiers, server, health_servicer, runner, grpc_port, http_port)
    app._closers.extend(closers)
    app._tasks.extend(tasks)
    app_ref.append(app)
    app._tasks.append(
        asyncio.create_task(
            refresh_tier_counts(relay_pool, settings.tier_counts_top_n, settings.tier_counts_interval_s),
            name="tier-counts",
        )
    )
    app._tasks.extend(start_scheduler(settings, pool))
    app._tasks.extend(start_downgrade_warnings(settings, pool))
    if isinstance(parts.cache, RedisViewCache):
        app._tasks.append(asyncio.create_task(parts.cache.keep_confirmed(), name="cache-confirmation"))
    app._closers.extend(parts.closers())
    if events is not None:
        events.start()
        app.drain_hooks += [events.stop_consumer, events.stop_relay, events.close]
    if target.embedded is not None:
        app._closers.append(_stopper(target.embedded))
    if tracing is not None:
        app._closers.insert(0, tracing.close)  # closed last: spans of the drain hooks go out too
    log.info(
        "serving",
        grpc_port=grpc_port,
        http_port=http_port,
        embedded_db=settings.embedded_db,
        auth=auth_mode,
        tls="mtls" if tls and tls.require_client_auth else "tls" if tls else "off",
    )
    return app


def _stopper(db: EmbeddedDatabase) -> Any:
    async def stop() -> None:
        await asyncio.to_thread(db.server.cleanup)

    return stop
