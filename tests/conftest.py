"""Shared fixtures: a fresh migrated database per session on the real PostgreSQL that
scripts/test started, merchants, and a real service process with a gRPC client.

Authentication is always on. `start_service` makes the service trust the session's test key
(tests/tokens.py); then:
  * `stub`              a CampaignServiceStub sending an admin token (`campaign:admin`: any merchant);
  * `stub_for(...)`     a stub with a token for one merchant and chosen scopes, or a given token;
  * `anonymous_stub`    a stub that sends no token;
  * `auth_channel(target, token=None)` / `mint_token(...)` (tests/tokens.py) for services a test
    starts itself with `start_service`.

Tests find the services only through environment variables written by `scripts/services up`
(`CAMPAIGN_TEST_PG_DSN`, `CAMPAIGN_TEST_REDIS_URL`, `KAFKA_BROKER`, ...).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.postgres.cache_epoch import PgCacheEpoch
from campaign_service.adapters.postgres.pool import create_pool, init_connection
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.adapters.redis.client import RedisBreaker, RedisClient, create_client, create_pipe
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.api.pb import campaign_grpc
from campaign_service.config import Settings
from campaign_service.domain.access import SCOPE_ADMIN
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService
from tests.databases import ProvisionedDatabase, create_migrated
from tests.kafka_support import CustomerEvents, TopicReader, core_service_codec
from tests.tokens import ISSUER, SESSION_ISSUER, auth_channel, mint_token


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that kill and restart the shared PostgreSQL, Redis or Kafka run first: a restart
    would break the session-wide connections other tests open (`owner_conn`, `superuser_conn`)."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_dependencies") is None)


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through scripts/test, which starts the services")
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Database = ProvisionedDatabase


async def make_database(name: str | None = None) -> Database:
    return await create_migrated(required_env("CAMPAIGN_TEST_PG_DSN"), name or f"campaign_test_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
async def database() -> Database:
    return await make_database()


@pytest.fixture(scope="session")
async def owner_conn(database: Database) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database.owner_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def superuser_conn(database: Database) -> AsyncIterator[asyncpg.Connection[Any]]:
    """Sees every row (superusers bypass RLS): for checking what really is in the tables."""
    conn = await asyncpg.connect(database.superuser_dsn, database=database.name)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def app_pool(database: Database) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    pool = await create_pool(database.app_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def relay_pool(database: Database) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """Logged in as campaign_relay, the outbox relay's and tier counts' own role."""
    pool = await create_pool(database.relay_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def tier_service(app_pool: asyncpg.Pool[asyncpg.Record]) -> TierService:
    return TierService(PgUnitOfWork(app_pool))


@pytest.fixture
async def new_merchant(owner_conn: asyncpg.Connection[Any]) -> Callable[[], Any]:
    """Provisions a fresh merchant (as the owner, like `campaign-service merchants add`)."""

    async def make() -> uuid.UUID:
        merchant = uuid.uuid4()
        await owner_conn.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
        return merchant

    return make


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_service(
    database: Database, tmp: Path, extra_env: Mapping[str, str | None] | None = None, wait: bool = True
) -> ServiceProcess:
    """Runs `python -m campaign_service serve` as its own process against `database`.

    The service verifies tokens against the session test key (a JWKS file in `tmp`), so
    `auth_channel(service.target)` works. `extra_env` overrides or, with None, removes variables.
    """
    grpc_port, http_port = free_port(), free_port()
    env = service_env(
        database, tmp, {"CAMPAIGN_GRPC_PORT": str(grpc_port), "CAMPAIGN_HTTP_PORT": str(http_port), **(extra_env or {})}
    )
    log_path = tmp / f"service-{grpc_port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaign_service", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    service = ServiceProcess(proc, grpc_port, http_port, log_path)
    if wait:
        wait_ready(service)
    return service


def service_env(database: Database, tmp: Path, extra_env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a `python -m campaign_service ...` process on `database`: only what is
    given, plus the session test key as the token verifier (a JWKS file in `tmp`). `extra_env`
    overrides or, with None, removes variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAMPAIGN_") and k not in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST")
    }
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "CAMPAIGN_DB_DSN": database.app_dsn,
            "CAMPAIGN_DB_OWNER_DSN": database.owner_dsn,
            "CAMPAIGN_RELAY_DB_DSN": database.relay_dsn,
            "CAMPAIGN_BIND_HOST": "127.0.0.1",
            "CAMPAIGN_DATA_DIR": str(tmp / "data"),
            "CAMPAIGN_LOG_LEVEL": "debug",
            "CAMPAIGN_JWT_JWKS_FILE": str(SESSION_ISSUER.write_jwks(tmp / "jwks.json")),
            "CAMPAIGN_JWT_ISSUER": ISSUER,
        }
    )
    for key, value in (extra_env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def wait_ready(service: ServiceProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"service exited with {service.proc.returncode}:\n{service.logs()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", service.http_port), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if b"200" in s.recv(64):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"service not ready in {timeout}s:\n{service.logs()[-4000:]}")


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A directory for the embedded PostgreSQL: as root, pgserver runs it as the user `pgserver`,
    which must reach the data directory (pytest's own temporary directories are private)."""
    path = Path(tempfile.mkdtemp(prefix="campaign-embedded."))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def service(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The session-wide service on the shared database, with its deadline scheduler off: on the
    real clock it would re-assess, concurrently, customers that integration tests have made due at
    fixed past dates and then re-assess themselves (a pass claims due customers of every merchant).
    The scheduler in a real process is tested on a database of its own (test_scheduler_kill.py)."""
    svc = start_service(database, tmp_path_factory.mktemp("service"), {"CAMPAIGN_SCHEDULER_INTERVAL_S": "0"})
    yield svc
    svc.stop()


@pytest.fixture
async def stub(service: ServiceProcess) -> AsyncIterator[campaign_grpc.CampaignServiceAsyncStub]:
    """The session service's stub with an admin token (`campaign:admin`, any merchant)."""
    async with auth_channel(service.target) as channel:
        yield campaign_grpc.CampaignServiceStub(channel)


@pytest.fixture
async def stub_for(service: ServiceProcess) -> AsyncIterator[Callable[..., campaign_grpc.CampaignServiceAsyncStub]]:
    """`stub_for(merchant, scopes=[...], subject="x")` or `stub_for(token="...")`: a stub of the
    session service sending that token. Defaults: no merchant, admin scope, subject test-admin."""
    channels: list[grpc.aio.Channel] = []

    def make(
        merchant: uuid.UUID | str | None = None,
        scopes: Any = (SCOPE_ADMIN,),
        subject: str = "test-admin",
        token: str | None = None,
    ) -> campaign_grpc.CampaignServiceAsyncStub:
        channel = auth_channel(service.target, token or mint_token(merchant, scopes, subject))
        channels.append(channel)
        return campaign_grpc.CampaignServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()


@pytest.fixture
async def anonymous_stub(service: ServiceProcess) -> AsyncIterator[campaign_grpc.CampaignServiceAsyncStub]:
    """A stub of the session service that sends no token."""
    async with grpc.aio.insecure_channel(service.target) as channel:
        yield campaign_grpc.CampaignServiceStub(channel)


@dataclass(frozen=True)
class RedisTarget:
    """The shared test Redis of one topology: a single node, or a node of the Redis Cluster."""

    host: str
    port: int
    cluster: bool

    def env(self, **extra: str) -> dict[str, str]:
        """The service's environment for this Redis (see redis_env)."""
        return redis_env(self.host, self.port, **({"CAMPAIGN_REDIS_CLUSTER": "true"} if self.cluster else {}), **extra)

    def client(self) -> RedisClient:
        if self.cluster:
            return aioredis.RedisCluster(host=self.host, port=self.port)
        return aioredis.Redis(host=self.host, port=self.port)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test on the shared test Redis runs against both topologies; one on a Redis of its own
    (own_redis, a single node it kills or pauses) only against that."""
    own = {"own_redis", "own_redis_cluster"} & set(metafunc.fixturenames)
    if "redis_target" in metafunc.fixturenames and not own:
        metafunc.parametrize("redis_target", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    cluster = getattr(request, "param", "single") == "cluster"
    u = urlparse(required_env("CAMPAIGN_TEST_REDIS_CLUSTER_URL" if cluster else "CAMPAIGN_TEST_REDIS_URL"))
    assert u.hostname
    assert u.port
    return RedisTarget(u.hostname, u.port, cluster)


def redis_address() -> tuple[str, int]:
    """Host and port of the Redis that scripts/test started."""
    u = urlparse(required_env("CAMPAIGN_TEST_REDIS_URL"))
    assert u.hostname
    assert u.port
    return u.hostname, u.port


def redis_env(host: str, port: int, **extra: str) -> dict[str, str]:
    """Service environment for a Redis at host:port (plan name REDIS_HOST, CAMPAIGN_REDIS_PORT)."""
    return {"REDIS_HOST": host, "CAMPAIGN_REDIS_PORT": str(port), **extra}


def redis_settings(host: str, port: int, **overrides: Any) -> Settings:
    return Settings.model_validate({"REDIS_HOST": host, "redis_port": port, **overrides})


@pytest.fixture
async def redis_client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    """A plain client of the shared test Redis (the cluster's in the cluster variant)."""
    client = redis_target.client()
    yield client
    await client.aclose()


Closable = TypeVar("Closable", RedisClient, RedisPipe)


async def _made_for_redis(
    create: Callable[[Settings], Closable], target: RedisTarget
) -> AsyncIterator[Callable[..., Closable]]:
    """A factory of what `create` makes from the service's settings for a Redis (the shared
    test Redis of `target`'s topology unless given), closing all it made when the test ends."""
    made: list[Closable] = []

    def make(host: str | None = None, port: int | None = None, **overrides: Any) -> Closable:
        if host is None or port is None:
            host, port = target.host, target.port
            overrides.setdefault("redis_cluster", target.cluster)
        made.append(create(redis_settings(host, port, **overrides)))
        return made[-1]

    yield make
    for thing in made:
        await thing.aclose()


@pytest.fixture
async def service_redis(redis_target: RedisTarget) -> AsyncIterator[Callable[..., RedisClient]]:
    """Factory of the service's own Redis clients (create_client), closed after the test."""
    async for make in _made_for_redis(create_client, redis_target):
        yield make


@pytest.fixture
async def service_pipe(redis_target: RedisTarget) -> AsyncIterator[Callable[..., RedisPipe]]:
    """Factory of the service's pipelined Redis connections (create_pipe), closed after the test."""
    async for make in _made_for_redis(create_pipe, redis_target):
        yield make


@pytest.fixture
async def redis_view_cache(
    app_pool: asyncpg.Pool[asyncpg.Record], service_pipe: Callable[..., RedisPipe]
) -> AsyncIterator[Callable[..., Any]]:
    """Factory of confirmed RedisViewCaches on the session database's cache epoch (the shared test
    Redis unless host/port are given), each with its background confirmation running."""
    tasks: list[asyncio.Task[None]] = []

    async def make(
        host: str | None = None,
        port: int | None = None,
        *,
        breaker: RedisBreaker | None = None,
        ttl_s: int = 3600,
        lease_s: float = 1.0,
        block_ttl_s: int = 60,
        background: bool = True,
        **overrides: Any,
    ) -> RedisViewCache:
        pipe = service_pipe(host, port, **overrides)
        cache = RedisViewCache(
            pipe, breaker or RedisBreaker(1.0), PgCacheEpoch(app_pool), ttl_s, lease_s=lease_s, block_ttl_s=block_ttl_s
        )
        assert await cache.confirm()
        if background:  # else nothing confirms it again, nor lifts a fill block whose lift failed
            tasks.append(asyncio.create_task(cache.keep_confirmed()))
        return cache

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class RedisServer:
    """A redis-server of the test's own (loopback, free port) that it may kill, pause and restart.
    With `persist`, it keeps an append-only file so a restart brings the old keys back."""

    directory: Path
    port: int
    persist: bool
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--dir", str(self.directory), "--appendonly", "yes" if self.persist else "no"]
        args += ["--appendfsync", "always"]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(19)  # SIGSTOP: connections are accepted, nothing is answered

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)  # SIGCONT


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@dataclass
class RedisClusterServers:
    """A Redis Cluster of the test's own (3 masters, 3 replicas), made and stopped by the
    project's scripts (scripts/lib/redis_cluster.sh); nodes 0..5."""

    directory: Path

    def _run(self, *args: str) -> None:
        libs = f"source {SCRIPTS}/lib/redis.sh; source {SCRIPTS}/lib/redis_cluster.sh"
        subprocess.run(["bash", "-c", f'{libs}; "$@"', "redis-cluster", *args], check=True, timeout=120)

    def up(self) -> None:
        self._run("redis_cluster_up", str(self.directory))

    def down(self) -> None:
        self._run("redis_cluster_down", str(self.directory))

    def port(self, node: int) -> int:
        return int((self.directory / str(node) / "port").read_text())

    def kill(self, node: int) -> None:
        """SIGKILL: its replica is promoted about two seconds later."""
        self._run("redis_cluster_kill", str(self.directory), str(node))

    def node_serving(self, key: str) -> int:
        """The node that is master of `key`'s slot now."""
        from redis import Redis
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        with Redis(port=self.port(0)) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(n for n in range(6) if self.port(n) == int(master[1]))
        raise AssertionError(f"slot {slot} has no master")


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path / "redis-cluster")
    cluster.up()
    yield cluster
    cluster.down()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def make(persist: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, free_port(), persist)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
        server.kill()


# --- Events: the real Kafka and schema registry -------------------------------------------


def events_env(**overrides: str) -> dict[str, str]:
    """Environment for a service process with Kafka, the registry and the Redis fast path; its own
    consumer group so that it reads customer.created independently of other processes."""
    redis = urlparse(required_env("CAMPAIGN_TEST_REDIS_URL"))
    env = {
        "KAFKA_BROKER": required_env("KAFKA_BROKER"),
        "CAMPAIGN_SCHEMA_REGISTRY_URL": required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"),
        "CAMPAIGN_KAFKA_CONSUMER_GROUP": f"campaign-test-{uuid.uuid4().hex[:10]}",
        "REDIS_HOST": redis.hostname or "127.0.0.1",
        "CAMPAIGN_REDIS_PORT": str(redis.port or 6379),
        "CAMPAIGN_OUTBOX_POLL_INTERVAL_S": "1",
        "CAMPAIGN_RELAY_BACKOFF_MAX_S": "1",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
async def avro_codec() -> AsyncIterator[AvroWireCodec]:
    """The service's codec: encodes what it produces, reads anything."""
    codec = AvroWireCodec(registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")))
    yield codec
    await codec.close()


@pytest.fixture(scope="session")
async def core_codec() -> AsyncIterator[AvroWireCodec]:
    """The Core Service's codec: customer.created with the Core's schema (CORE_CUSTOMER_CREATED)."""
    codec = core_service_codec(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    yield codec
    await codec.close()


@pytest.fixture(scope="session")
def event_service(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service with Kafka: relay and customer.created consumer in the process."""
    svc = start_service(database, tmp_path_factory.mktemp("event-service"), extra_env=events_env())
    yield svc
    svc.stop()


@pytest.fixture
async def read_topic(avro_codec: AvroWireCodec) -> AsyncIterator[Callable[[str], TopicReader]]:
    """Makes readers that see only what is written to a topic after they were made."""
    readers: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        reader = TopicReader(required_env("KAFKA_BROKER"), topic, avro_codec)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
async def customer_events(core_codec: AvroWireCodec) -> AsyncIterator[CustomerEvents]:
    producer = CustomerEvents(required_env("KAFKA_BROKER"), core_codec)
    yield producer
    producer.close()


@pytest.fixture
async def merchant_with_default(new_merchant: Callable[[], Any], tier_service: TierService) -> Callable[[], Any]:
    """A provisioned merchant whose default tier is `basic`."""

    async def make() -> uuid.UUID:
        merchant: uuid.UUID = await new_merchant()
        await tier_service.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
        return merchant

    return make


@dataclass
class OwnDatabase:
    """A database of one test: no other relay or consumer touches its outbox."""

    db: Database
    pool: asyncpg.Pool[asyncpg.Record]
    su: asyncpg.Connection[Any]  # superuser: sees every row
    tiers: TierService
    relay_pool: asyncpg.Pool[asyncpg.Record]  # logged in as campaign_relay (the outbox relay's role)

    async def merchant(self) -> uuid.UUID:
        merchant = uuid.uuid4()
        await self.su.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
        return merchant

    async def outbox(self, merchant: uuid.UUID) -> list[asyncpg.Record]:
        return list(
            await self.su.fetch(
                "SELECT event_id, published_at, attempts, last_error FROM outbox_events"
                " WHERE merchant_id = $1 ORDER BY seq",
                merchant,
            )
        )


@pytest.fixture
async def own_db() -> AsyncIterator[OwnDatabase]:
    db = await make_database()
    pool = await create_pool(db.app_dsn, min_size=1, max_size=4)
    relay_pool = await create_pool(db.relay_dsn, min_size=1, max_size=2)
    su = await asyncpg.connect(db.superuser_dsn, database=db.name)
    await init_connection(su)
    yield OwnDatabase(db, pool, su, TierService(PgUnitOfWork(pool)), relay_pool)
    await su.close()
    await relay_pool.close()
    await pool.close()
