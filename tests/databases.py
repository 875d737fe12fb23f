"""Test and benchmark databases: provisioned (roles, database) and migrated on a server the tests
reach over TCP with trust or password-less local auth. Not part of the service."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import asyncpg

from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.provision import APP_ROLE, OWNER_ROLE, RELAY_ROLE, provision


@dataclass(frozen=True)
class ProvisionedDatabase:
    """A database on the test server, reached as the owner, the service role or a superuser."""

    superuser_dsn: str
    name: str

    def dsn(self, user: str) -> str:
        u = urlparse(self.superuser_dsn)
        return f"postgresql://{user}@{u.hostname}:{u.port}/{self.name}"

    @property
    def owner_dsn(self) -> str:
        return self.dsn(OWNER_ROLE)

    @property
    def app_dsn(self) -> str:
        return self.dsn(APP_ROLE)

    @property
    def relay_dsn(self) -> str:
        return self.dsn(RELAY_ROLE)


async def create_migrated(superuser_dsn: str, name: str) -> ProvisionedDatabase:
    """Roles, database and schema in one go."""
    db = ProvisionedDatabase(superuser_dsn, name)
    await provision(superuser_dsn, name)
    conn = await asyncpg.connect(db.owner_dsn)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    return db
