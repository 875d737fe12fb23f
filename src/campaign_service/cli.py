"""`campaign-service serve | migrate | merchants add <uuid> | relay | outbox list | dev-token`: nothing else
starts the process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

import asyncpg
import structlog
import uvloop

from campaign_service import logs
from campaign_service.adapters.auth.dev import MAX_DEV_TTL_S, dev_signing_key, mint_dev_token
from campaign_service.adapters.postgres.outbox import OutboxRow, PgOutbox
from campaign_service.bootstrap import build_app
from campaign_service.config import ConfigError, Settings, load_settings
from campaign_service.domain.access import SCOPE_READ, SCOPE_WRITE, SCOPES
from campaign_service.wiring import database
from campaign_service.wiring.events import build_relay, register_schemas

log = structlog.get_logger(__name__)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _tune_gc() -> None:
    """The cyclic garbage collector out of the hot paths (py-spy --native during bench.points_latency:
    15 % of the service's samples were collections). A batch allocates its rows' objects in bursts
    that die young, so with Python's first-generation threshold (700) the collector ran every few
    hundred rows, and its full collections walked every long-lived object again. Here: a larger
    first generation, and what start-up built (modules, the app) frozen out of every collection."""
    gc.set_threshold(50_000, 20, 10)
    gc.freeze()


async def _serve(settings: Settings) -> int:
    app = await build_app(settings)
    _tune_gc()
    await _stop_on_signals().wait()
    try:
        await asyncio.wait_for(app.stop(), app.stop_bound_s)
    except TimeoutError:
        log.error("shutdown exceeded its bound; exiting anyway", bound_s=app.stop_bound_s)
        return 1
    return 0


async def _relay(settings: Settings) -> None:
    """The outbox relay alone (no gRPC, no consumer), e.g. as its own deployment."""
    settings.event_bus_address()
    async with (
        database.target(settings) as target,
        database.relay_pool(settings, target.relay_dsn) as pool,
    ):
        relay = build_relay(settings, pool, target.relay_dsn)
        _tune_gc()
        stop = _stop_on_signals()
        try:
            await register_schemas(relay.codec)
            await relay.run(stop)
        finally:
            await relay.close()


def _outbox_json(row: OutboxRow) -> dict[str, Any]:
    m = row.message
    return {
        "event_id": str(m.event_id),
        "topic": m.topic,
        "key": m.key,
        "merchant_id": str(m.merchant_id),
        "created_at": row.created_at.isoformat(),
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "headers": m.headers,
        "payload": m.payload,
    }


async def _outbox_list(settings: Settings, pending_only: bool, limit: int) -> None:
    async with database.target(settings) as target:
        await database.migrate(target.owner_dsn)
        async with database.relay_pool(settings, target.relay_dsn) as pool:  # every merchant's rows
            rows = await PgOutbox(pool).rows(pending_only=pending_only, limit=limit)
    for row in rows:
        print(json.dumps(_outbox_json(row), ensure_ascii=False))


async def _migrate(settings: Settings) -> None:
    async with database.target(settings) as target:
        applied = await database.migrate(target.owner_dsn)
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


async def _merchants_add(settings: Settings, merchant: UUID) -> None:
    async with database.target(settings) as target:
        await database.migrate(target.owner_dsn)
        conn = await asyncpg.connect(target.owner_dsn)
        try:
            created = await conn.fetchval(
                "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING true", merchant
            )
        finally:
            await conn.close()
    print(f"merchant {merchant} {'added' if created else 'already exists'}")


async def _dev_token(settings: Settings, args: argparse.Namespace) -> None:
    """Prints a token the embedded default accepts; refuses anywhere else (production never mints)."""
    if not settings.embedded_db or settings.auth_mode() != "dev":
        raise ConfigError(
            "dev-token works only on the embedded default (no CAMPAIGN_DB_HOST/CAMPAIGN_DB_DSN, AUTH_HOST or"
            " CAMPAIGN_JWT_* key source): get tokens from your identity provider instead"
        )
    token = mint_dev_token(
        dev_signing_key(settings.data_dir),
        audience=settings.jwt_audience,
        merchant_id=args.merchant,
        scopes=args.scope or [SCOPE_READ, SCOPE_WRITE],
        subject=args.subject,
        ttl_s=args.ttl,
    )
    print(token)


def _ttl(value: str) -> int:
    seconds = int(value)
    if not 0 < seconds <= MAX_DEV_TTL_S:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_DEV_TTL_S} seconds")
    return seconds


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaign-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC (50058) and HTTP (8080) servers")
    sub.add_parser("migrate", help="apply pending database migrations")
    merchants = sub.add_parser("merchants", help="manage the tenant registry")
    msub = merchants.add_subparsers(dest="action", required=True)
    add = msub.add_parser("add", help="provision a merchant")
    add.add_argument("merchant_id", type=_uuid)
    dev = sub.add_parser(
        "dev-token",
        help="print a short-lived token for the embedded default (send as `authorization: Bearer <token>`)",
    )
    dev.add_argument("--merchant", type=_uuid, help="the merchant the token is for (omit with campaign:admin)")
    dev.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help=f"repeat for several; default {SCOPE_READ} and {SCOPE_WRITE}",
    )
    dev.add_argument("--subject", default="dev", help="who the token names (the `actor` of changes); default dev")
    dev.add_argument("--ttl", type=_ttl, default=3600, help="lifetime in seconds (default 3600)")
    sub.add_parser("relay", help="run only the outbox relay (needs KAFKA_BROKER and CAMPAIGN_SCHEMA_REGISTRY_URL)")
    outbox = sub.add_parser("outbox", help="inspect the transactional outbox")
    osub = outbox.add_subparsers(dest="action", required=True)
    listing = osub.add_parser("list", help="print outbox events as JSON lines, newest first")
    listing.add_argument("--pending", action="store_true", help="only events not yet published")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    return parser


def _command(args: argparse.Namespace, settings: Settings) -> Callable[[], Coroutine[Any, Any, int | None]]:
    if args.command == "serve":
        return lambda: _serve(settings)
    if args.command == "migrate":
        return lambda: _migrate(settings)
    if args.command == "merchants":
        return lambda: _merchants_add(settings, args.merchant_id)
    if args.command == "relay":
        return lambda: _relay(settings)
    if args.command == "dev-token":
        return lambda: _dev_token(settings, args)
    return lambda: _outbox_list(settings, args.pending, max(1, args.limit))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        return uvloop.run(_command(args, settings)()) or 0
    except (ConfigError, database.UnsafeDatabaseRole) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot use the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
