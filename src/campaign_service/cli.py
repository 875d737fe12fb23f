"""`campaign-service serve | migrate | merchants add <uuid>`: nothing else starts the process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from uuid import UUID

import asyncpg
import structlog
import uvloop

from campaign_service import logs
from campaign_service.bootstrap import UnsafeDatabaseRole, build_app, database_target, run_migrations
from campaign_service.config import ConfigError, Settings, load_settings

log = structlog.get_logger(__name__)


async def _serve(settings: Settings) -> int:
    app = await build_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    try:
        await asyncio.wait_for(app.stop(), app.stop_bound_s)
    except TimeoutError:
        log.error("shutdown exceeded its bound; exiting anyway", bound_s=app.stop_bound_s)
        return 1
    return 0


async def _migrate(settings: Settings) -> None:
    target = await database_target(settings)
    applied = await run_migrations(target.owner_dsn)
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    if target.embedded is not None:
        target.embedded.server.cleanup()


async def _merchants_add(settings: Settings, merchant: UUID) -> None:
    target = await database_target(settings)
    await run_migrations(target.owner_dsn)
    conn = await asyncpg.connect(target.owner_dsn)
    try:
        created = await conn.fetchval(
            "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING true", merchant
        )
    finally:
        await conn.close()
        if target.embedded is not None:
            target.embedded.server.cleanup()
    print(f"merchant {merchant} {'added' if created else 'already exists'}")


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            return uvloop.run(_serve(settings))
        elif args.command == "migrate":
            uvloop.run(_migrate(settings))
        elif args.command == "merchants":
            uvloop.run(_merchants_add(settings, args.merchant_id))
    except (ConfigError, UnsafeDatabaseRole) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot use the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
