"""/metrics of a real service process after known traffic: values, bounded vip_tiers_total, promtool."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import ServiceProcess, make_database, start_service
from tests.tokens import auth_channel

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: ServiceProcess) -> tuple[str, Samples]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.http_port}/metrics") as resp:
        assert resp.status == 200
        body = await resp.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    return body, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def tier_series(samples: Samples) -> dict[str, float]:
    return {dict(labels)["merchant_id"]: v for (name, labels), v in samples.items() if name == "vip_tiers_total"}


async def wait_tier_series(service: ServiceProcess, expected: dict[str, float]) -> dict[str, float]:
    series: dict[str, float] = {}
    for _ in range(100):  # refreshed every 0.2 s: 10 s at most
        series = tier_series((await scrape(service))[1])
        if series == expected:
            break
        await asyncio.sleep(0.1)
    return series


@pytest.fixture(scope="module")
async def metered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A service on its own database, so tier counts across all merchants are known exactly."""
    database = await make_database()
    svc = start_service(
        database,
        tmp_path_factory.mktemp("metrics"),
        {"CAMPAIGN_TIER_COUNTS_TOP_N": "2", "CAMPAIGN_TIER_COUNTS_INTERVAL_S": "0.2"},
    )
    conn = await asyncpg.connect(database.owner_dsn)
    try:
        yield svc, conn
    finally:
        await conn.close()
        svc.stop()


async def create_tiers(stub: Any, merchant: uuid.UUID, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await stub.CreateVIPTier(
            pb.CreateVIPTierRequest(
                merchant_id=str(merchant), tier=pb.VIPTier(tier_id=f"t{i}", name=f"T{i}", min_points=i * 100)
            )
        )


async def test_metric_values_after_known_traffic(metered: Any) -> None:
    service, owner = metered
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    for m in (a, b, c, d):
        await owner.execute("INSERT INTO merchants (id) VALUES ($1)", m)
    async with auth_channel(service.target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        for merchant, n in ((a, 3), (b, 2), (c, 1), (d, 1)):
            await create_tiers(stub, merchant, n)
        for _ in range(5):
            await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(a), tier_id="t0"))
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(a), tier_id="missing"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id="not-a-uuid", tier_id="t0"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Top 2 merchants by tier count get their own series; the rest are summed as "other".
        assert await wait_tier_series(service, {str(a): 3, str(b): 2, "other": 2}) == {
            str(a): 3,
            str(b): 2,
            "other": 2,
        }
        _, samples = await scrape(service)
        handled = "grpc_server_handled_total"
        assert value(samples, handled, grpc_method="GetVIPTier", grpc_code="OK") == 5
        assert value(samples, handled, grpc_method="GetVIPTier", grpc_code="NOT_FOUND") == 3
        assert value(samples, handled, grpc_method="GetVIPTier", grpc_code="INVALID_ARGUMENT") == 1
        assert value(samples, handled, grpc_method="CreateVIPTier", grpc_code="OK") == 7
        assert value(samples, "vip_tier_lookup_errors_by_type_total", type="NOT_FOUND") == 3
        assert value(samples, "vip_tier_lookup_errors_by_type_total", type="INVALID_ARGUMENT") == 1
        assert value(samples, "vip_tier_lookup_latency_seconds_count", method="GetVIPTier", cache="none") == 9
        assert value(samples, "grpc_server_handling_seconds_count", grpc_method="CreateVIPTier") == 7
        assert value(samples, "campaign_db_up") in (0, 1)

        # d overtakes b: b's series goes away (still counted in "other"), the label set stays at 3.
        await create_tiers(stub, d, 3, start=1)
        assert await wait_tier_series(service, {str(d): 4, str(a): 3, "other": 3}) == {
            str(d): 4,
            str(a): 3,
            "other": 3,
        }


async def test_promtool_accepts_the_metrics_output(metered: Any, tmp_path: Path) -> None:
    service, _ = metered
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run the tests through scripts/test, which installs it")
    body, samples = await scrape(service)
    assert any(name == "vip_tiers_total" for name, _ in samples)
    proc = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(body.encode()), 30)
    assert proc.returncode == 0, out.decode()


async def test_service_role_counts_tiers_only_through_the_definer_function(metered: Any) -> None:
    """The owner still sees no tenant rows (RLS forced) outside campaign_tier_counts()."""
    _, owner = metered
    assert await owner.fetchval("SELECT count(*) FROM vip_tiers") == 0
    assert await owner.fetchval("SELECT sum(tiers) FROM campaign_tier_counts(1000)") > 0
