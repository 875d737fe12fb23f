"""Composition root: settings -> pools and clients -> adapters -> use cases -> servers."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health

from campaign_service import metrics
from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.embedded import EmbeddedDatabase, start_embedded
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.api.http import Check, build_http_app
from campaign_service.api.server import build_grpc_server, set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.config import Settings
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
    _closers: list[Any] = field(default_factory=list)

    async def stop(self, grace_s: float = 10.0) -> None:
        await set_serving(self.health, False)
        await self.grpc_server.stop(grace_s)
        await self.http_runner.cleanup()
        await self.pool.close()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()


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
    tiers = TierService(PgUnitOfWork(pool))
    server, health_servicer = build_grpc_server(
        CampaignServicer(tiers), max_message_bytes=settings.grpc_max_message_bytes
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

    runner = web.AppRunner(build_http_app([Check("postgres", db_check)]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.http_port)
    await site.start()
    http_port = runner.addresses[0][1] if runner.addresses else settings.http_port
    await server.start()
    await set_serving(health_servicer, True)
    app = App(settings, pool, tiers, server, health_servicer, runner, grpc_port, http_port)
    if target.embedded is not None:
        app._closers.append(_stopper(target.embedded))
    log.info("serving", grpc_port=grpc_port, http_port=http_port, embedded_db=settings.embedded_db)
    return app


def _stopper(db: EmbeddedDatabase) -> Any:
    async def stop() -> None:
        await asyncio.to_thread(db.server.cleanup)

    return stop
