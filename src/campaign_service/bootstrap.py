"""Composition root: settings -> pools and clients -> adapters -> use cases -> servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health

from campaign_service import metrics
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
from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.embedded import EmbeddedDatabase, start_embedded
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_counts import refresh_tier_counts
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.http import Check, build_http_app
from campaign_service.api.server import build_grpc_server, set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.api.tls import ReloadingServerCredentials, TlsFilesError
from campaign_service.config import AuthMode, ConfigError, Settings
from campaign_service.service.ports import TokenVerifier
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


async def build_app(settings: Settings) -> App:
    auth_mode = settings.auth_mode()  # refuses a production configuration without a verifier
    tls = tls_credentials(settings)
    closers: list[StopHook] = []
    tasks: list[asyncio.Task[None]] = []
    verifier = await token_verifier(settings, auth_mode, closers, tasks)
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
    tiers = TierService(PgUnitOfWork(pool, acquire_timeout_s=settings.db_connect_timeout_s))
    server, health_servicer = build_grpc_server(
        CampaignServicer(tiers),
        extra_interceptors=[AuthInterceptor(verifier)],
        max_message_bytes=settings.grpc_max_message_bytes,
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

    app_ref: list[App] = []
    http_app = build_http_app(
        [Check("postgres", db_check)], draining=lambda: bool(app_ref) and app_ref[0].draining
    )
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
            refresh_tier_counts(pool, settings.tier_counts_top_n, settings.tier_counts_interval_s),
            name="tier-counts",
        )
    )
    if target.embedded is not None:
        app._closers.append(_stopper(target.embedded))
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
