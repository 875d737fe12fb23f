"""Service processes on a real Redis: two instances stay coherent and share the rate limit, and
one keeps answering while its Redis is killed and restarted, with nothing stale afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import Database, RedisServer, RedisTarget, ServiceProcess, redis_env, start_service
from tests.service_http import http_get, metric
from tests.tokens import auth_channel


def hits(service: ServiceProcess) -> float:
    return metric(service, "vip_tier_cache_requests_total", view="tier", result="hit")


@asynccontextmanager
async def client(service: ServiceProcess) -> AsyncIterator[campaign_grpc.CampaignServiceAsyncStub]:
    async with auth_channel(service.target) as channel:  # an admin token
        yield campaign_grpc.CampaignServiceStub(channel)


@pytest.fixture
def services(database: Database, tmp_path: Path) -> Any:
    started: list[ServiceProcess] = []

    def start(env: dict[str, str]) -> ServiceProcess:
        started.append(start_service(database, tmp_path / str(len(started)), env))
        return started[-1]

    for d in range(4):
        (tmp_path / str(d)).mkdir()
    yield start
    for svc in started:
        svc.stop()


async def create_gold(stub: campaign_grpc.CampaignServiceAsyncStub, merchant: uuid.UUID) -> None:
    await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(
            merchant_id=str(merchant), tier=pb.VIPTier(tier_id="gold", name="Gold", translations={"ar": "ذهبي"})
        )
    )


def get_gold(merchant: uuid.UUID, locale: str = "") -> pb.GetVIPTierRequest:
    return pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale=locale)


def rename(merchant: uuid.UUID, name: str) -> pb.UpdateVIPTierRequest:
    req = pb.UpdateVIPTierRequest(merchant_id=str(merchant), tier_id="gold", tier=pb.VIPTier(name=name))
    req.update_mask.paths.append("name")
    return req


async def test_update_through_one_instance_is_read_through_the_other(
    services: Callable[..., ServiceProcess], new_merchant: Callable[[], Any], redis_client: aioredis.Redis,
    redis_target: RedisTarget,
) -> None:
    env = redis_target.env()
    a, b = services(env), services(env)
    merchant = await new_merchant()
    async with client(a) as stub_a, client(b) as stub_b:
        await create_gold(stub_a, merchant)
        for stub in (stub_b, stub_a, stub_b):  # B fills, then both answer from the shared cache
            got = await stub.GetVIPTier(get_gold(merchant))
            assert got.name == "Gold"
        assert hits(a) == 1
        assert hits(b) == 1
        assert 3590 <= await redis_client.ttl(f"cache:{{{merchant}}}:gold") <= 3600
        listed = await stub_b.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
        assert [t.name for t in listed.tiers] == ["Gold"]

        await stub_a.UpdateVIPTier(rename(merchant, "Platinum"))
        assert (await stub_b.GetVIPTier(get_gold(merchant))).name == "Platinum"
        listed = await stub_b.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
        assert [t.name for t in listed.tiers] == ["Platinum"]

        await stub_b.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_a.GetVIPTier(get_gold(merchant))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert metric(a, "vip_tier_lookup_latency_seconds_count", method="GetVIPTier", cache="hit") == 1


async def test_rate_limit_is_shared_and_says_when_to_retry(
    services: Callable[..., ServiceProcess], new_merchant: Callable[[], Any], redis_target: RedisTarget
) -> None:
    # A 5 s window so that the burst surely falls into one window on a busy machine.
    env = redis_target.env(CAMPAIGN_RATE_LIMIT_WINDOW_MS="5000")
    a, b = services(env), services(env)
    merchant = await new_merchant()
    async with client(a) as stub_a, client(b) as stub_b:
        await create_gold(stub_a, merchant)  # request 1
        calls = [(stub_a if i % 2 else stub_b).GetVIPTier(get_gold(merchant)) for i in range(100)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) == 1, [r.code() for r in refused]
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(refused[0])
        assert status is not None
        assert status.code == code_pb2.RESOURCE_EXHAUSTED
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert 0 < retry.retry_delay.ToMilliseconds() <= 5000
        # Other merchants are not affected.
        other = await new_merchant()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_a.GetVIPTier(get_gold(other))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Health (and reflection, metrics) are never limited.
    async with grpc.aio.insecure_channel(a.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(150):
            reply = await health.Check(health_pb2.HealthCheckRequest(service="campaign.v1.CampaignService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    limited = sum(
        metric(s, "vip_tier_rate_limited_requests_total", method="GetVIPTier", limiter="redis") for s in (a, b)
    )
    assert limited == 1


def ready(service: ServiceProcess) -> tuple[int, dict[str, Any]]:
    status, body = http_get(service, "/ready")
    return status, json.loads(body)


async def test_redis_killed_mid_test_then_restarted(
    services: Callable[..., ServiceProcess], own_redis: Callable[..., RedisServer], new_merchant: Callable[[], Any]
) -> None:
    server = own_redis(persist=True)  # comes back with its old keys, like a Redis with persistence
    svc = services(
        redis_env(
            "127.0.0.1",
            server.port,
            CAMPAIGN_REDIS_TIMEOUT_MS="100",
            CAMPAIGN_REDIS_RETRY_AFTER_MS="200",
            CAMPAIGN_RATE_LIMIT_WINDOW_MS="5000",
        )
    )
    merchant, burst_merchant = await new_merchant(), await new_merchant()
    async with client(svc) as stub:
        await create_gold(stub, merchant)
        for _ in range(2):
            assert (await stub.GetVIPTier(get_gold(merchant, "ar"))).display_name == "ذهبي"
        assert hits(svc) == 1
        assert ready(svc) == (200, {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}})

        server.kill()
        for _ in range(5):  # lookups keep succeeding, from PostgreSQL
            got = await stub.GetVIPTier(get_gold(merchant, "ar"), timeout=2)
            assert got.display_name == "ذهبي"
        await stub.UpdateVIPTier(rename(merchant, "Platinum"), timeout=2)  # writes succeed
        assert (await stub.GetVIPTier(get_gold(merchant), timeout=2)).name == "Platinum"
        status, body = ready(svc)
        assert (status, body["status"]) == (200, "degraded")
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["redis"] != "ok"
        assert metric(svc, "vip_tier_cache_errors_total") > 0
        assert metric(svc, "campaign_redis_up") == 0
        # The limit still holds, per instance.
        results = await asyncio.gather(
            *(stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(burst_merchant))) for _ in range(101)),
            return_exceptions=True,
        )
        assert [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)] == [
            grpc.StatusCode.RESOURCE_EXHAUSTED
        ]
        assert metric(svc, "vip_tier_rate_limited_requests_total", limiter="local") == 1

        server.start()  # Redis returns with the answer cached before the update
        names = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ready(svc)[1]["checks"]["redis"] != "ok":
            names.add((await stub.GetVIPTier(get_gold(merchant), timeout=2)).name)
            await asyncio.sleep(0.05)
        assert ready(svc) == (200, {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}})
        for _ in range(3):
            names.add((await stub.GetVIPTier(get_gold(merchant), timeout=2)).name)
        assert names == {"Platinum"}
    assert hits(svc) >= 2  # the cache is in use again
    assert metric(svc, "vip_tier_cache_invalidation_retries_total", outcome="ok") >= 1


async def test_invalidations_a_killed_instance_never_delivered_are_not_served_after_its_restart(
    services: Callable[..., ServiceProcess], own_redis: Callable[..., RedisServer], new_merchant: Callable[[], Any]
) -> None:
    """The fault matrix's stale lookups: a Redis hiccup opens the breaker, an acknowledged rename's
    invalidation waits in the instance's memory (the instance bypasses its cache meanwhile), the
    instance is SIGKILLed, and its successor must not answer the name from before the rename."""
    server = own_redis()
    # A long cool-down: the invalidation surely waits, and no background retry delivers it.
    env = redis_env("127.0.0.1", server.port, CAMPAIGN_REDIS_TIMEOUT_MS="100", CAMPAIGN_REDIS_RETRY_AFTER_MS="60000")
    first = services(env)
    merchant = await new_merchant()
    async with client(first) as stub:
        await create_gold(stub, merchant)
        for _ in range(2):
            assert (await stub.GetVIPTier(get_gold(merchant))).name == "Gold"
        assert hits(first) == 1
        server.pause()  # one timed-out call opens the breaker; the lookup answers from PostgreSQL
        assert (await stub.GetVIPTier(get_gold(merchant), timeout=5)).name == "Gold"
        server.resume()
        await stub.UpdateVIPTier(rename(merchant, "Platinum"), timeout=5)  # acknowledged
        assert (await stub.GetVIPTier(get_gold(merchant), timeout=5)).name == "Platinum"
    assert metric(first, "vip_tier_cache_pending_invalidations") == 2  # the tier and the merchant's list
    redis = aioredis.Redis(host="127.0.0.1", port=server.port)
    assert await redis.hexists(f"cache:{{{merchant}}}:gold", "tier:")  # the answer from before the rename
    await redis.aclose()
    first.proc.kill()  # SIGKILL: the pending invalidations die with the process
    first.proc.wait(10)

    second = services(env)
    async with client(second) as stub:
        for _ in range(2):
            assert (await stub.GetVIPTier(get_gold(merchant))).name == "Platinum"
    assert hits(second) == 1  # the successor does use the cache


async def test_in_process_cache_without_redis(
    services: Callable[..., ServiceProcess], new_merchant: Callable[[], Any]
) -> None:
    svc = services({"CAMPAIGN_CACHE": "memory"})
    merchant = await new_merchant()
    async with client(svc) as stub:
        await create_gold(stub, merchant)
        for _ in range(2):
            assert (await stub.GetVIPTier(get_gold(merchant))).name == "Gold"
        assert hits(svc) == 1
        await stub.UpdateVIPTier(rename(merchant, "Platinum"))
        assert (await stub.GetVIPTier(get_gold(merchant))).name == "Platinum"
    assert ready(svc)[1]["checks"] == {"postgres": "ok"}


async def fill_through(stubs: list[Any], services: list[ServiceProcess], merchant: uuid.UUID, name: str) -> None:
    """Reads through each instance until each has answered `name` from the cache."""
    for stub, svc in zip(stubs, services, strict=True):
        deadline = time.monotonic() + 15
        before = hits(svc)
        while hits(svc) == before:
            assert time.monotonic() < deadline, "the cache is not used again"
            assert (await stub.GetVIPTier(get_gold(merchant), timeout=2)).name == name
            await asyncio.sleep(0.05)


async def read_from_the_first_millisecond(stub: Any, merchant: uuid.UUID, seconds: float) -> list[str]:
    """Names answered by back-to-back lookups for `seconds` (failed lookups are not answers)."""
    names, failed = [], set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            names.append((await stub.GetVIPTier(get_gold(merchant), timeout=2)).name)
        except grpc.aio.AioRpcError as exc:
            failed.add(exc.code())
    assert failed <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    return names


async def test_no_stale_answer_when_redis_returns_with_its_data(
    services: Callable[..., ServiceProcess], own_redis: Callable[..., RedisServer], new_merchant: Callable[[], Any]
) -> None:
    """Issue 12.1: A and B on one Redis with an append-only file. Redis is SIGKILLed, the tier is
    renamed through A (acknowledged), Redis restarts with the cached answers of before the rename,
    and B is read from the first millisecond: it must never answer the old name."""
    server = own_redis(persist=True)
    env = redis_env(
        "127.0.0.1",
        server.port,
        CAMPAIGN_REDIS_TIMEOUT_MS="100",
        CAMPAIGN_REDIS_RETRY_AFTER_MS="200",
        CAMPAIGN_RATE_LIMIT_REQUESTS="0",
    )
    a, b = services(env), services(env)
    merchant = await new_merchant()
    stale: dict[int, list[str]] = {}
    answered = 0
    async with client(a) as stub_a, client(b) as stub_b:
        await create_gold(stub_a, merchant)
        name = "Gold"
        redis = aioredis.Redis(host="127.0.0.1", port=server.port)
        for outage in range(5):
            await fill_through([stub_a, stub_b], [a, b], merchant, name)
            assert await redis.hexists(f"cache:{{{merchant}}}:gold", "tier:")  # what the restart brings back
            await redis.aclose()
            server.kill()
            name = f"Gold {outage}"
            await stub_a.UpdateVIPTier(rename(merchant, name), timeout=5)  # acknowledged
            server.start()
            names = await read_from_the_first_millisecond(stub_b, merchant, 2.0)
            answered += len(names)
            stale[outage] = [n for n in names if n != name]
            redis = aioredis.Redis(host="127.0.0.1", port=server.port)
        await redis.aclose()
    print(f"\nlookups through B after the restarts: {answered}, stale: {sum(map(len, stale.values()))}")
    per_outage = {k: len(v) for k, v in stale.items()}
    assert not any(per_outage.values()), f"stale answers per outage: {per_outage}"
    assert answered > 50


async def test_no_stale_answer_after_the_writer_dies_while_redis_is_down(
    services: Callable[..., ServiceProcess],
    own_redis: Callable[..., RedisServer],
    new_merchant: Callable[[], Any],
    superuser_conn: asyncpg.Connection[Any],
) -> None:
    """Redis stops answering (SIGSTOP: it comes back with all its keys and the same identity, so
    only the write can tell B), the tier is renamed through A, A is SIGKILLed right after the
    commit (before it could deliver anything to Redis), Redis resumes, and B, idle through it
    all, is read from the first millisecond."""
    server = own_redis(persist=True)
    env = redis_env(
        "127.0.0.1",
        server.port,
        CAMPAIGN_REDIS_TIMEOUT_MS="100",
        CAMPAIGN_REDIS_RETRY_AFTER_MS="200",
        CAMPAIGN_RATE_LIMIT_REQUESTS="0",
        # A block sent while Redis is stopped lands when it resumes; it expires after 2 x (1 + 2) s.
        CAMPAIGN_DB_STATEMENT_TIMEOUT_MS="1000",
    )
    b = services(env)
    merchant = await new_merchant()
    stale: list[str] = []
    async with client(b) as stub_b:
        await create_gold(stub_b, merchant)
        name = "Gold"
        for death in range(2):
            a = services(env)
            async with client(a) as stub_a:
                await fill_through([stub_a, stub_b], [a, b], merchant, name)
                server.pause()
                name = f"Gold {death}"
                renaming = asyncio.ensure_future(stub_a.UpdateVIPTier(rename(merchant, name), timeout=10))
                deadline = time.monotonic() + 10
                while (
                    await superuser_conn.fetchval(
                        "SELECT name FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'gold'", merchant
                    )
                    != name
                ):
                    assert time.monotonic() < deadline, "the rename did not commit"
                    await asyncio.sleep(0.002)
                a.proc.kill()  # SIGKILL right after the commit
                a.proc.wait(10)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await renaming  # (fails: the writer died before acknowledging)
            server.resume()
            names = await read_from_the_first_millisecond(stub_b, merchant, 2.0)
            assert names
            stale += [n for n in names if n != name]
    assert not stale, f"{len(stale)} stale answers: {sorted(set(stale))}"
