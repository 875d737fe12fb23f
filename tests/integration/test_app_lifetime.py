"""The app's lifetime, in-process: a start that fails at a late step closes, in reverse, all the
steps before it opened (database connections, Redis connections, the Kafka producer's thread,
the HTTP listener, background tasks, the embedded PostgreSQL); and the whole app runs on fakes
of its ports, with no database at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.bootstrap import build_app
from campaign_service.config import Settings
from campaign_service.domain.access import SCOPE_ADMIN, Principal
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService
from campaign_service.wiring.database import UnsafeDatabaseRole
from tests.conftest import Database, events_env, free_port, make_database, redis_address, required_env
from tests.fakes import FakeUnitOfWork
from tests.tokens import ISSUER, SESSION_ISSUER


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """The service's settings from exactly `env` (not the test run's own variables)."""
    for name in list(os.environ):
        if name.startswith("CAMPAIGN_") or name in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Loopback, free ports, the suite's JWKS file (its key refresher is a task to clean up)."""
    return {
        "CAMPAIGN_BIND_HOST": "127.0.0.1",
        "CAMPAIGN_GRPC_PORT": str(free_port()),
        "CAMPAIGN_HTTP_PORT": str(free_port()),
        "CAMPAIGN_DATA_DIR": str(tmp_path / "data"),
        "CAMPAIGN_JWT_JWKS_FILE": str(SESSION_ISSUER.write_jwks(tmp_path / "jwks.json")),
        "CAMPAIGN_JWT_ISSUER": ISSUER,
        **extra,
    }


@contextlib.contextmanager
def port_taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[Database, asyncpg.Connection[Any]]]:
    """A database of this test, and a superuser connection (to another database) watching it."""
    db = await make_database()
    watcher = await asyncpg.connect(required_env("CAMPAIGN_TEST_PG_DSN"))
    yield db, watcher
    await watcher.close()


async def sessions_on(watcher: asyncpg.Connection[Any], db: Database) -> int:
    """Backends connected to `db` a moment after their clients closed (a backend exits shortly after)."""
    count = 0
    for _ in range(50):
        count = await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db.name)
        if count == 0:
            break
        await asyncio.sleep(0.1)
    return int(count)


async def redis_connection_ids(client: aioredis.Redis) -> set[str]:
    clients = await client.client_list()
    return {c["id"] for c in clients if c.get("name", "").startswith("campaign-service")}


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def producer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "kafka-producer-poll"}


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_a_refused_database_role_closes_the_pool_redis_and_the_key_refresher(
    own_database: tuple[Database, asyncpg.Connection[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db, watcher = own_database
    host, port = redis_address()
    redis_client = aioredis.Redis(host=host, port=port)
    # The owner role: check_app_role refuses it after the pool (and the keys) are open; Redis opens
    # after it (the cache's epoch lives in the database), so it must not be left open either.
    settings = settings_from(
        monkeypatch,
        base_env(
            tmp_path,
            CAMPAIGN_DB_DSN=db.owner_dsn,
            CAMPAIGN_DB_OWNER_DSN=db.owner_dsn,
            CAMPAIGN_RELAY_DB_DSN=db.relay_dsn,
            REDIS_HOST=host,
            CAMPAIGN_REDIS_PORT=str(port),
        ),
    )
    tasks, redis_before = other_tasks(), await redis_connection_ids(redis_client)
    try:
        with pytest.raises(UnsafeDatabaseRole):
            await build_app(settings)
        assert await sessions_on(watcher, db) == 0
        assert await redis_connection_ids(redis_client) == redis_before
        assert other_tasks() == tasks  # the JWKS file poller among them
    finally:
        await redis_client.aclose()


async def test_a_port_already_bound_closes_everything_opened_before_it(
    own_database: tuple[Database, asyncpg.Connection[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gRPC port is the last thing opened: events (producer, consumer, relay and its LISTEN
    connection), HTTP, pool, Redis and the key refresher were all open when it fails."""
    db, watcher = own_database
    host, port = redis_address()
    redis_client = aioredis.Redis(host=host, port=port)
    env = base_env(
        tmp_path,
        CAMPAIGN_DB_DSN=db.app_dsn,
        CAMPAIGN_DB_OWNER_DSN=db.owner_dsn,
        CAMPAIGN_RELAY_DB_DSN=db.relay_dsn,
        **events_env(),
    )
    tasks, threads, redis_before = other_tasks(), producer_threads(), await redis_connection_ids(redis_client)
    try:
        with port_taken() as grpc_port:
            settings = settings_from(monkeypatch, {**env, "CAMPAIGN_GRPC_PORT": str(grpc_port)})
            with pytest.raises(RuntimeError, match=r"[Bb]ind"):
                await build_app(settings)
        assert await sessions_on(watcher, db) == 0
        assert await redis_connection_ids(redis_client) == redis_before
        assert other_tasks() == tasks
        assert producer_threads() == threads
        assert refuses_connections(settings.http_port)
    finally:
        await redis_client.aclose()


def processes_using(data_dir: Path) -> list[str]:
    """Command lines of running processes that name `data_dir` (the embedded server's postgres)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(data_dir) in args:
                found.append(args)
    return found


async def test_a_failed_start_stops_the_embedded_postgresql(
    monkeypatch: pytest.MonkeyPatch, embedded_dir: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(embedded_dir))  # pgserver's lock file; restored afterwards
    data = embedded_dir / "data"
    env = base_env(embedded_dir)
    del env["CAMPAIGN_JWT_JWKS_FILE"], env["CAMPAIGN_JWT_ISSUER"]  # the embedded default's own keys
    tasks = other_tasks()
    with port_taken() as grpc_port:
        settings = settings_from(monkeypatch, {**env, "CAMPAIGN_GRPC_PORT": str(grpc_port)})
        assert settings.embedded_db
        with pytest.raises(RuntimeError, match=r"[Bb]ind"):
            await build_app(settings)
    assert (data / "pg" / "PG_VERSION").exists()  # it did start
    assert not (data / "pg" / "postmaster.pid").exists()
    assert processes_using(data) == []
    assert other_tasks() == tasks
    assert refuses_connections(settings.http_port)


class AdminVerifier:
    """Any token is an administrator's."""

    async def verify(self, token: str) -> Principal:
        return Principal("fake-admin", None, frozenset({SCOPE_ADMIN}), expires_at=2**31)


async def test_the_app_serves_a_lookup_on_fakes_without_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uow = FakeUnitOfWork()
    merchant = uow.provision()
    await TierService(uow).create(merchant, "gold", TierSpec(name="Gold", min_points=100))
    # A configured database nobody listens on: touching it would fail the start.
    env = base_env(tmp_path, CAMPAIGN_DB_HOST="127.0.0.1", CAMPAIGN_DB_PORT=str(free_port()))
    settings = settings_from(monkeypatch, env)
    tasks = other_tasks()
    token = (("authorization", "Bearer anything"),)
    app = await build_app(settings, uow=uow, verifier=AdminVerifier())
    async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"), metadata=token)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="silver"), metadata=token)
    assert (got.tier_id, got.name, got.min_points) == ("gold", "Gold", 100)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert other_tasks() == tasks
    assert refuses_connections(app.grpc_port)
    assert refuses_connections(app.http_port)
