"""SIGTERM on a real service process: in-flight RPCs finish, new ones are refused, exit 0 in bounds."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import Database, ServiceProcess, start_service
from tests.tokens import auth_channel

CALLS = 40


async def wait_for_exit(service: ServiceProcess, limit_s: float) -> tuple[int | None, float]:
    """The exit code (None if still running after `limit_s`) and the seconds waited."""
    start = time.monotonic()
    try:
        code = await asyncio.wait_for(asyncio.to_thread(service.proc.wait), limit_s)
    except TimeoutError:
        code = None
    return code, time.monotonic() - start


async def blocked_lookups(database: Database) -> None:
    """Waits until the service's whole pool is stuck behind our table lock."""
    # Its own connection: pg_stat_activity is a snapshot taken once per transaction.
    su = await asyncpg.connect(database.superuser_dsn, database=database.name)
    try:
        await _wait_blocked(su)
    finally:
        await su.close()


async def _wait_blocked(su: asyncpg.Connection[Any]) -> None:
    for _ in range(200):
        # (pg_stat_activity.query still shows the previous statement while a Parse waits: use pg_locks.)
        waiting = await su.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = 'campaign-service' AND NOT l.granted"
            " AND l.relation = 'vip_tiers'::regclass"
        )
        if waiting >= 10:  # CAMPAIGN_DB_POOL_MAX's default: the rest wait for a connection
            return
        await asyncio.sleep(0.05)
    raise AssertionError("lookups never reached the database")


async def start_blocked_lookups(
    database: Database, lock: asyncpg.Connection[Any], stub: Any, merchant: str
) -> tuple[Any, list[asyncio.Future[Any]]]:
    """Locks vip_tiers (in a transaction it returns) and starts CALLS lookups that block on the
    lock, so they are surely in flight when SIGTERM arrives."""
    tx = lock.transaction()
    await tx.start()
    await lock.execute("LOCK TABLE vip_tiers IN ACCESS EXCLUSIVE MODE")
    calls = [
        asyncio.ensure_future(stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=merchant, tier_id="gold")))
        for _ in range(CALLS)
    ]
    await blocked_lookups(database)
    return tx, calls


async def ready_status(service: ServiceProcess) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.http_port}/ready") as r:
        return r.status


@pytest.fixture
async def tier(database: Database, owner_conn: asyncpg.Connection[Any], stub: Any) -> str:
    merchant = uuid.uuid4()
    await owner_conn.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
    await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=pb.VIPTier(tier_id="gold", name="Gold", min_points=1))
    )
    return str(merchant)


async def test_in_flight_rpcs_complete_during_sigterm(database: Database, tier: str, tmp_path: Path) -> None:
    service = start_service(database, tmp_path, {"CAMPAIGN_SHUTDOWN_GRACE_S": "20"})
    lock = await asyncpg.connect(database.superuser_dsn, database=database.name)
    try:
        async with auth_channel(service.target) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=tier, tier_id="gold"))  # channel connected
            tx, calls = await start_blocked_lookups(database, lock, stub, tier)
            await asyncio.sleep(0.3)  # the calls beyond the pool size reach the server too
            service.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)

            # Draining: alive, not ready, and new RPCs are refused while the old ones wait.
            assert service.proc.poll() is None
            assert await ready_status(service) == 503
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=tier, tier_id="gold"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not any(c.done() for c in calls)

            await tx.rollback()  # the database answers again
            results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if not isinstance(r, pb.VIPTier)]
        assert not failed, failed[:3]
        assert all(r.tier_id == "gold" for r in results if isinstance(r, pb.VIPTier))
        code, took = await wait_for_exit(service, 15)
        assert code == 0, service.logs()[-3000:]
        assert took < 15
        assert '"message": "stopped"' in service.logs()
    finally:
        await lock.close()
        service.stop(signal.SIGKILL)


async def test_health_reports_not_serving_during_the_shutdown_delay(
    database: Database, tier: str, tmp_path: Path
) -> None:
    service = start_service(database, tmp_path, {"CAMPAIGN_SHUTDOWN_DELAY_S": "2"})
    try:
        async with auth_channel(service.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert serving.status == health_pb2.HealthCheckResponse.SERVING
            service.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await ready_status(service) == 503
            # Still answering during the delay, so traffic in the load balancer's pipe is not lost.
            stub = campaign_grpc.CampaignServiceStub(channel)
            assert (await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=tier, tier_id="gold"))).tier_id == "gold"
        code, _ = await wait_for_exit(service, 15)
        assert code == 0
    finally:
        service.stop(signal.SIGKILL)


async def test_rpcs_stuck_past_the_grace_period_do_not_hold_the_exit(
    database: Database, tier: str, tmp_path: Path
) -> None:
    service = start_service(database, tmp_path, {"CAMPAIGN_SHUTDOWN_GRACE_S": "1"})
    lock = await asyncpg.connect(database.superuser_dsn, database=database.name)
    try:
        async with auth_channel(service.target) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            tx, calls = await start_blocked_lookups(database, lock, stub, tier)
            service.proc.send_signal(signal.SIGTERM)
            code, took = await wait_for_exit(service, 15)  # the lock is still held
            await tx.rollback()
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert code == 0, service.logs()[-3000:]
        assert took < 1 + 10  # grace + the bounded rest of the stop
        assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
    finally:
        await lock.close()
        service.stop(signal.SIGKILL)
