"""The embedded PostgreSQL (the `pgserver` wheel) used when no database is configured."""

from __future__ import annotations

import asyncio
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from campaign_service.adapters.postgres.provision import APP_ROLE, OWNER_ROLE, RELAY_ROLE, provision

DATABASE = "campaign"


@dataclass(frozen=True)
class EmbeddedDatabase:
    server: Any
    superuser_dsn: str
    socket_dir: str

    def dsn(self, user: str) -> str:
        return f"postgresql://{user}@/{DATABASE}?host={self.socket_dir}"

    @property
    def app_dsn(self) -> str:
        return self.dsn(APP_ROLE)

    @property
    def owner_dsn(self) -> str:
        return self.dsn(OWNER_ROLE)

    @property
    def relay_dsn(self) -> str:
        return self.dsn(RELAY_ROLE)

    async def stop(self) -> None:
        """Stops the server unless another process still uses it (pgserver counts its users)."""
        await asyncio.to_thread(self.server.cleanup)


def _start_server(data_dir: Path) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    # pgserver keeps its lock file in the XDG runtime dir; give it one inside our data dir.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.resolve()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(  # type: ignore[attr-defined]
            str((data_dir / "pg").resolve()), cleanup_mode="stop"
        )


async def start_embedded(data_dir: Path) -> EmbeddedDatabase:
    """Starts (or joins) the server in `data_dir/pg` and provisions roles and the database.

    The server listens on a Unix socket only, with trust authentication for local users: it is
    a single-machine development default, not a production set-up. It stops when the last
    process using it exits.
    """
    server = await asyncio.to_thread(_start_server, data_dir)
    uri = server.get_uri()
    socket_dir = parse_qs(urlparse(uri).query)["host"][0]
    db = EmbeddedDatabase(server=server, superuser_dsn=uri, socket_dir=socket_dir)
    try:
        await provision(uri, DATABASE)
    except BaseException:
        await db.stop()
        raise
    return db
