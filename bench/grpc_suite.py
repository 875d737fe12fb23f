"""gRPC benchmark suite: the real service against a no-op grpc.aio handler, in one run.

The server under test runs pinned to one core, ghz (the load generator) to the other. For each
scenario it measures the maximum throughput (closed loop, fixed concurrency) and p50/p99 at
fixed rates, then prints each scenario's throughput as a ratio of the no-op's, plus the service's
peak RSS. Writes bench/results/grpc_suite.json.

    .venv/bin/python -m bench.grpc_suite [--seconds 10] [--rates 100,1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
from tests.tokens import mint_token

from bench.harness import ROOT, Database, Process, auth_env, free_port, fresh_database, save_result, services, start

SERVER_CORE = 1
LOADGEN_CORE = 0
PROTO = ROOT / "proto" / "campaign" / "v1" / "campaign_service.proto"


@dataclass
class Scenario:
    name: str
    target: str  # "noop" or a service configuration name
    method: str
    request: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


def ghz_binary() -> str:
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT}/scripts/lib/loadgen.sh && ghz_install"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def ghz(
    binary: str, port: int, scenario: Scenario, *, seconds: int, concurrency: int, rps: int | None
) -> dict[str, Any]:
    args = [
        "taskset", "-c", str(LOADGEN_CORE), binary, "--insecure", "--proto", str(PROTO),
        "--import-paths", str(PROTO.parent.parent.parent),
        "--call", f"campaign.v1.CampaignService/{scenario.method}",
        "-d", json.dumps(scenario.request), "-z", f"{seconds}s", "-c", str(concurrency),
        "--connections", "1", "-O", "json",
    ]  # fmt: skip
    if scenario.metadata:
        args += ["-m", json.dumps(scenario.metadata)]
    if rps:
        args += ["-r", str(rps)]
    out = subprocess.run(
        [*args, f"127.0.0.1:{port}"], check=False, capture_output=True, text=True, timeout=seconds + 60
    )
    if not out.stdout.startswith("{"):
        sys.exit(f"ghz failed for {scenario.name}: {out.stderr.strip()[:500]}")
    report = json.loads(out.stdout)
    dist = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    return {
        "rps": report["rps"],
        "p50_ms": dist.get(50, float("nan")),
        "p99_ms": dist.get(99, float("nan")),
        "count": report["count"],
        "errors": sum(v for k, v in codes.items() if k != "OK"),
        "codes": codes,
    }


async def seed(db: Database) -> uuid.UUID:
    """One merchant with 10 tiers, each with Arabic and Hebrew names and two perks."""
    merchant = uuid.uuid4()
    owner = await asyncpg.connect(db.dsn("campaign_owner"))
    await owner.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
    await owner.close()
    app = await asyncpg.connect(db.dsn("campaign_app"))
    async with app.transaction():
        await app.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        for i in range(10):
            tier_id = "gold" if i == 3 else f"tier{i}"
            perks = [{"code": f"perk{j}", "label": {"en": f"Perk {j}", "ar": f"ميزة {j}"}} for j in range(2)]
            await app.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, benefits) VALUES ($1, $2, $3, $4, $5::jsonb)",
                merchant, tier_id, f"Tier {i}", i * 1000, json.dumps({"bonus_points": i * 10, "custom_perks": perks}),
            )  # fmt: skip
            await app.executemany(
                "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, $2, $3, $4)",
                [(merchant, tier_id, "ar", f"مستوى {i}"), (merchant, tier_id, "he", f"רמה {i}")],
            )
    await app.close()
    return merchant


def service_env(db: Database, env: dict[str, str], port: int, extra: dict[str, str]) -> dict[str, str]:
    clean = {
        k: v
        for k, v in env.items()
        if not k.startswith("CAMPAIGN_") and k not in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST")
    }
    return {
        **clean,
        "CAMPAIGN_DB_DSN": db.dsn("campaign_app"),
        "CAMPAIGN_DB_OWNER_DSN": db.dsn("campaign_owner"),
        "CAMPAIGN_RELAY_DB_DSN": db.dsn("campaign_relay"),
        "CAMPAIGN_BIND_HOST": "127.0.0.1",
        "CAMPAIGN_GRPC_PORT": str(port),
        "CAMPAIGN_HTTP_PORT": str(free_port()),
        "CAMPAIGN_LOG_LEVEL": "warning",
        **extra,
    }


# A limit no benchmark reaches: the shared limiter still runs on every request, it just never refuses.
UNLIMITED = {"CAMPAIGN_RATE_LIMIT_REQUESTS": "1000000000"}


def redis_env(env: dict[str, str]) -> dict[str, str]:
    u = urlparse(env["CAMPAIGN_TEST_REDIS_URL"])
    return {"REDIS_HOST": u.hostname or "127.0.0.1", "CAMPAIGN_REDIS_PORT": str(u.port)}


def redis_cluster_env(env: dict[str, str]) -> dict[str, str]:
    u = urlparse(env["CAMPAIGN_TEST_REDIS_CLUSTER_URL"])
    return {"REDIS_HOST": u.hostname or "127.0.0.1", "CAMPAIGN_REDIS_PORT": str(u.port), "CAMPAIGN_REDIS_CLUSTER": "true"}


def service_configs(env: dict[str, str], tmp: Path) -> dict[str, dict[str, str]]:
    """Service configurations compared: the production shape (Redis cache and shared limit,
    authentication), and the same without the cache."""
    base = {**auth_env(tmp), **redis_env(env), **UNLIMITED}
    return {"service": base, "uncached": {**base, "CAMPAIGN_CACHE": "off"}}


def scenarios(merchant: uuid.UUID) -> list[Scenario]:
    m = str(merchant)
    # Every call carries a merchant token (the no-op too, so both parse the same metadata); the
    # service verifies it once and then finds it in its verified-token cache.
    auth = {"authorization": f"Bearer {mint_token(merchant, ['tiers:read', 'tiers:write'], 'bench', ttl_s=3600)}"}
    return [
        Scenario("no-op GetVIPTier", "noop", "GetVIPTier", {"merchant_id": m, "tier_id": "gold"}, auth),
        Scenario("GetVIPTier", "service", "GetVIPTier", {"merchant_id": m, "tier_id": "gold", "locale": "ar"}, auth),
        Scenario(
            "GetVIPTier (uncached)",
            "uncached",
            "GetVIPTier",
            {"merchant_id": m, "tier_id": "gold", "locale": "ar"},
            auth,
        ),
        Scenario("ListVIPTiers (10 tiers, ar)", "service", "ListVIPTiers", {"merchant_id": m, "locale": "ar"}, auth),
        Scenario(
            "UpdateVIPTier",
            "service",
            "UpdateVIPTier",
            # every call writes: a new threshold each time (ghz template), so each commits a row and an event
            {
                "merchant_id": m,
                "tier_id": "tier9",
                "tier": {"minPoints": "{{.RequestNumber}}"},
                "update_mask": {"paths": ["min_points"]},
            },
            auth,
        ),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    binary = ghz_binary()
    results: list[dict[str, Any]] = []
    with services("postgres redis") as env, tempfile.TemporaryDirectory() as tmp:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchant = await seed(db)
        configs = service_configs(env, Path(tmp))
        for sc in scenarios(merchant):
            port = free_port()
            if sc.target == "noop":
                proc: Process = start([sys.executable, "-m", "bench.noop_server", str(port)], port=port, core=SERVER_CORE,
                                      env=dict(os.environ), log=Path(tmp, "noop.log"))  # fmt: skip
            else:
                proc = start([sys.executable, "-m", "campaign_service", "serve"], port=port, core=SERVER_CORE,
                             env=service_env(db, env, port, configs[sc.target]), log=Path(tmp, f"{sc.target}.log"))  # fmt: skip
            try:
                ghz(binary, port, sc, seconds=2, concurrency=args.concurrency, rps=None)  # warm-up
                row: dict[str, Any] = {
                    "scenario": sc.name,
                    "max": ghz(binary, port, sc, seconds=args.seconds, concurrency=args.concurrency, rps=None),
                }
                for rate in rates:
                    row[f"at_{rate}"] = ghz(
                        binary, port, sc, seconds=args.seconds, concurrency=max(4, args.concurrency // 4), rps=rate
                    )
                row["peak_rss_mib"] = proc.peak_rss_mib()
            finally:
                proc.stop()
            results.append(row)
            print(f"{sc.name:<30} {row['max']['rps']:>8.0f} rps  errors={row['max']['errors']}", flush=True)
    noop = next(r for r in results if r["scenario"].startswith("no-op"))["max"]["rps"]
    print()
    header = f"{'scenario':<30} {'max rps':>8} {'x no-op':>8} {'p50 ms':>7} {'p99 ms':>7}"
    for rate in rates:
        header += f" {f'p50@{rate}':>9} {f'p99@{rate}':>9}"
    print(header + f" {'RSS MiB':>8}")
    for r in results:
        line = f"{r['scenario']:<30} {r['max']['rps']:>8.0f} {r['max']['rps'] / noop:>8.2f} {r['max']['p50_ms']:>7.2f} {r['max']['p99_ms']:>7.2f}"
        for rate in rates:
            line += f" {r[f'at_{rate}']['p50_ms']:>9.2f} {r[f'at_{rate}']['p99_ms']:>9.2f}"
        print(line + f" {r['peak_rss_mib']:>8.1f}")
    save_result("grpc_suite", results)


if __name__ == "__main__":
    asyncio.run(main())
