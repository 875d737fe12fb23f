"""Superuser-side set-up of roles and the database (embedded server, tests, first install).

Creates `campaign_owner` (owns the schema, runs migrations), `campaign_app` (the service's
request path: no ownership, no superuser, no BYPASSRLS, a member of no other role) and
`campaign_relay` (its own login: the outbox relay and the tier-count metric, which see every
merchant's outbox rows and tier counts; the request path never holds it).
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

OWNER_ROLE = "campaign_owner"
APP_ROLE = "campaign_app"
RELAY_ROLE = "campaign_relay"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def _ensure_role(conn: asyncpg.Connection[Any], name: str, options: str, password: str | None) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
    verb = "ALTER" if exists else "CREATE"
    pw = ""
    if password is not None:
        quoted = await conn.fetchval("SELECT quote_literal($1)", password)
        pw = f" PASSWORD {quoted}"
    await conn.execute(f'{verb} ROLE "{name}" {options}{pw}')


async def provision(
    superuser_dsn: str,
    database: str,
    *,
    owner_password: str | None = None,
    app_password: str | None = None,
    relay_password: str | None = None,
) -> None:
    if not _IDENT.match(database):
        raise ValueError("database name must be 1-63 characters of a-z, 0-9 and _")
    conn = await asyncpg.connect(superuser_dsn)
    try:
        await _ensure_role(conn, OWNER_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS", owner_password)
        await _ensure_role(conn, APP_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE", app_password)
        await _ensure_role(conn, RELAY_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE", relay_password)
        # Before issue 12.4 the service role could SET ROLE to the relay's; no longer.
        if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", APP_ROLE, RELAY_ROLE):
            await conn.execute(f'REVOKE "{RELAY_ROLE}" FROM "{APP_ROLE}"')
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}" OWNER "{OWNER_ROLE}"')
    finally:
        await conn.close()
    db_conn = await asyncpg.connect(superuser_dsn, database=database)
    try:
        # PostgreSQL 15 no longer lets every role create in `public`; the owner needs it.
        await db_conn.execute(f'GRANT CREATE, USAGE ON SCHEMA public TO "{OWNER_ROLE}"')
    finally:
        await db_conn.close()
