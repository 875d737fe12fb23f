"""Connection pools with JSON codecs and bounded timeouts."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def keep_session(conn: asyncpg.Connection[Any]) -> None:
    """A released connection keeps its session as it is: asyncpg's default reset (advisory
    unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a round trip after every transaction, and nothing
    here leaves session state behind: settings are set_config(..., true), locks are xact locks,
    LISTEN has a connection of its own. An open transaction is still rolled back (asyncpg does
    that before calling this)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    statement_timeout_ms: int = 5000,
    connect_timeout_s: float = 5.0,
) -> asyncpg.Pool[asyncpg.Record]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout_s,
        command_timeout=statement_timeout_ms / 1000 + 1,
        init=init_connection,
        reset=keep_session,
        server_settings={
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(statement_timeout_ms * 2),
            "application_name": "campaign-service",
        },
    )
    assert pool is not None
    return pool
