"""The network between the service and PostgreSQL delayed (2 s per packet) or cut (blackhole, reset)
through a fault proxy: lookups end with UNAVAILABLE within a bound (statement, command and pool
acquire timeouts), calls do not pile up (later bursts are no slower, connections and memory stay
bounded), /health keeps answering, and lookups succeed again soon after the network heals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from campaign_service.api.pb import campaign_grpc
from tests.chaos.lookups import Call, TierFacts, burst, get_tier, lookup_channel
from tests.chaos.merchants import merchants_with_tiers
from tests.conftest import ServiceProcess, make_database, start_service
from tests.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(240)

STATEMENT_TIMEOUT_MS = 500
CONNECT_TIMEOUT_S = 1.0
POOL_MAX = 5
# Each call may wait for a pooled connection (acquire timeout) and then for one statement
# (statement timeout + asyncpg's 1 s client-side margin); a little more for a loaded machine.
FAIL_BOUND_S = CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_MS / 1000 + 1 + 2.0
BURST = 100
BURSTS = 4
CLIENT_DEADLINE_S = 20.0  # far above FAIL_BOUND_S: what ends a call is the service's bound


def rss_mib(service: ServiceProcess) -> float:
    for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connections_to(service: ServiceProcess, port: int) -> int:
    """TCP connections the service process has open (or opening) to 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{service.proc.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    remote = f"0100007F:{port:04X}"
    rows = Path(f"/proc/{service.proc.pid}/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if (f := r.split())[2] == remote and f[9] in inodes)


def health_seconds(service: ServiceProcess) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/health", timeout=5) as resp:
        assert resp.status == 200
    return time.monotonic() - start


async def recovery_seconds(stub: campaign_grpc.CampaignServiceAsyncStub, expected: TierFacts, within: float) -> float:
    """Seconds until five lookups in a row succeed with the right answer."""
    start = time.monotonic()
    streak = 0
    while streak < 5:
        assert time.monotonic() - start < within, f"lookups did not recover within {within}s"
        call = await get_tier(stub, expected, 1.0)
        assert not call.wrong
        streak = streak + 1 if call.ok else 0
        if not call.ok:
            await asyncio.sleep(0.05)
    return time.monotonic() - start


@dataclass
class Observed:
    """Sampled while a burst runs: the service's connections to the proxy and /health latency."""

    connections: int = 0
    health_s: float = 0.0


async def observe(service: ServiceProcess, port: int, stop: asyncio.Event) -> Observed:
    seen = Observed()
    while not stop.is_set():
        seen.connections = max(seen.connections, connections_to(service, port))
        seen.health_s = max(seen.health_s, await asyncio.to_thread(health_seconds, service))
        await asyncio.sleep(0.05)
    return seen


async def observed_burst(
    stub: campaign_grpc.CampaignServiceAsyncStub, expected: list[TierFacts], service: ServiceProcess, port: int
) -> tuple[list[Call], Observed]:
    stop = asyncio.Event()
    watcher = asyncio.create_task(observe(service, port, stop))
    try:
        calls = await burst(stub, expected, BURST, CLIENT_DEADLINE_S)
    finally:
        stop.set()
    return calls, await watcher


def describe(calls: list[Call]) -> str:
    codes: dict[str, int] = {}
    for c in calls:
        codes[c.code.name] = codes.get(c.code.name, 0) + 1
    return f"{codes}, slowest {max(c.seconds for c in calls):.2f}s"


FAULTS: dict[str, Callable[[FaultProxy], object]] = {
    "delay 2 s": lambda proxy: proxy.delay(2.0),
    "blackhole": lambda proxy: proxy.blackhole(),
    "reset": lambda proxy: proxy.refuse(),
}


async def test_delay_and_cut_between_service_and_postgres(tmp_path: Path) -> None:
    db = await make_database()
    expected = await merchants_with_tiers(db, 3)
    pg = urllib.parse.urlparse(db.superuser_dsn)
    proxy = await FaultProxy(pg.hostname or "127.0.0.1", pg.port or 5432).start()
    # In a thread: the proxy runs on this event loop and must serve while the service starts.
    service = await asyncio.to_thread(
        start_service,
        db,
        tmp_path,
        {
            "CAMPAIGN_DB_DSN": f"postgresql://campaign_app@127.0.0.1:{proxy.port}/{db.name}",
            "CAMPAIGN_DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
            "CAMPAIGN_DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
            "CAMPAIGN_DB_POOL_MAX": str(POOL_MAX),
            "CAMPAIGN_LOG_LEVEL": "info",
            # Every lookup goes to the database, and the bursts are not the rate limit's business.
            "CAMPAIGN_CACHE": "off",
            "CAMPAIGN_RATE_LIMIT_REQUESTS": "0",
        },
    )
    report = []
    try:
        async with lookup_channel(service.target) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            healthy = await burst(stub, expected, BURST, CLIENT_DEADLINE_S)
            assert all(c.ok and not c.wrong for c in healthy), describe(healthy)
            rss_before = rss_mib(service)
            for fault, inject in FAULTS.items():
                inject(proxy)
                slowest = []
                for i in range(BURSTS):
                    calls, seen = await observed_burst(stub, expected, service, proxy.port)
                    slowest.append(max(c.seconds for c in calls))
                    report.append(
                        f"{fault}, burst {i + 1} of {BURST}: {describe(calls)}; /health <= {seen.health_s:.3f}s,"
                        f" service->db connections <= {seen.connections}, rss {rss_mib(service):.0f} MiB"
                    )
                    assert {c.code for c in calls} == {grpc.StatusCode.UNAVAILABLE}, report[-1]
                    assert slowest[-1] < FAIL_BOUND_S, report[-1]
                    assert seen.health_s < 1.0, report[-1]
                    # the pool's connections and at most one cancel request each
                    assert seen.connections <= 2 * POOL_MAX, report[-1]
                # No queue builds up: a later burst is not slower than the first.
                assert max(slowest[1:]) <= slowest[0] + 0.5, report[-BURSTS:]
                proxy.heal()
                recovered = await recovery_seconds(stub, expected[0], within=15)
                report.append(f"{fault}: healed, lookups right again after {recovered:.2f}s")
            rss_after = rss_mib(service)
            report.append(f"rss {rss_before:.0f} -> {rss_after:.0f} MiB")
            assert rss_after - rss_before < 50, report[-1]
    finally:
        print("\n".join(report))
        await proxy.close()
        assert service.stop() == 0, service.logs()[-3000:]
