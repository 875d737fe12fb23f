"""GetVIPTier through the Redis cache, the in-process cache and no cache, against a no-op
grpc.aio handler, in one run: every server pinned to the same core, ghz on the other.

For each target: closed-loop throughput with p50/p99 (fixed concurrency), p99 at a fixed
1,000 req/s, and the server's CPU time per request (from /proc; meaningful even when the load
generator, not the server, is the limit). Ratios are against the no-op handler. The rate limit
stays on (shared through Redis) with a limit the load never reaches, except in the one row that
shows what the limiter costs; authentication is on (a run-local JWKS, tokens cached once verified).
Tracing is off except in the "tracing on" rows: OTLP/gRPC export of every span (and of 1 % of
them) to a receiver that drops them (bench.otlp_sink, on the load generator's core); the number of
spans it received is printed, so a row whose spans never went out shows.

The "Redis Cluster cache" row is the same lookup on a Redis Cluster (3 masters, 3 replicas, from
scripts/lib/redis_cluster.sh; CAMPAIGN_REDIS_CLUSTER=true) for a same-run comparison with the
single-node row.

    .venv/bin/python -m bench.lookup [--seconds 10] [--concurrency 32] [--rate 1000] [--only redis,tracing]
    .venv/bin/python -m bench.lookup --only "Redis cache,Cluster"   # single node vs cluster
    .venv/bin/python -m bench.lookup --only "Redis cache" --locale ar-SA   # a regional tag (issue 16)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.tokens import mint_token

from bench.grpc_suite import (
    LOADGEN_CORE,
    SERVER_CORE,
    UNLIMITED,
    Scenario,
    ghz,
    ghz_binary,
    redis_cluster_env,
    redis_env,
    seed,
    service_env,
)
from bench.harness import Process, auth_env, free_port, fresh_database, services, start


def _count(spans_file: Path) -> int:
    try:
        return int(spans_file.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--only", default="", help="comma-separated parts of target names (the no-op always runs)")
    parser.add_argument("--locale", default="ar", help="the requested tag (e.g. ar-SA: a regional tag, issue 16)")
    args = parser.parse_args()
    binary = ghz_binary()
    rows: list[dict[str, Any]] = []
    with services("postgres redis redis_cluster") as env, tempfile.TemporaryDirectory() as tmp:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchant = await seed(db)
        base = {**auth_env(Path(tmp)), **redis_env(env)}
        sink_port, spans_file = free_port(), Path(tmp, "spans")
        sink = start(
            [sys.executable, "-m", "bench.otlp_sink", str(sink_port), str(spans_file)],
            port=sink_port,
            core=LOADGEN_CORE,
            env=dict(os.environ),
            log=Path(tmp, "sink.log"),
        )
        # The batch processor's defaults; OTEL_BSP_* would change them.
        tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
        targets: dict[str, dict[str, str] | None] = {
            "no-op grpc.aio handler": None,
            "GetVIPTier, Redis cache": {**base, **UNLIMITED},
            "GetVIPTier, Redis cache, tracing on": {**base, **UNLIMITED, **tracing},
            "GetVIPTier, Redis cache, tracing 1%": {
                **base,
                **UNLIMITED,
                **tracing,
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
            "GetVIPTier, Redis Cluster cache": {**base, **UNLIMITED, **redis_cluster_env(env)},
            "GetVIPTier, Redis cache, no limit": {**base, "CAMPAIGN_RATE_LIMIT_REQUESTS": "0"},
            "GetVIPTier, in-process cache": {**base, **UNLIMITED, "CAMPAIGN_CACHE": "memory"},
            "GetVIPTier, no cache": {**base, **UNLIMITED, "CAMPAIGN_CACHE": "off"},
        }
        request = {"merchant_id": str(merchant), "tier_id": "gold", "locale": args.locale}
        # Every call carries a merchant token (the no-op too, so both parse the same metadata).
        auth = {"authorization": f"Bearer {mint_token(merchant, ['tiers:read'], 'bench', ttl_s=3600)}"}
        only = [part for part in args.only.split(",") if part]
        for name, extra in targets.items():
            if extra is not None and only and not any(part in name for part in only):
                continue
            port = free_port()
            log = Path(tmp, f"{len(rows)}.log")
            if extra is None:
                cmd = [sys.executable, "-m", "bench.noop_server", str(port)]
                proc: Process = start(cmd, port=port, core=SERVER_CORE, env=dict(os.environ), log=log)
            else:
                cmd = [sys.executable, "-m", "campaign_service", "serve"]
                proc = start(cmd, port=port, core=SERVER_CORE, env=service_env(db, env, port, extra), log=log)
            scenario = Scenario(name, "", "GetVIPTier", request, auth)
            spans_before = _count(spans_file)
            try:
                ghz(binary, port, scenario, seconds=2, concurrency=args.concurrency, rps=None)  # warm-up, fills
                before = cpu_seconds(proc.proc.pid)
                top = ghz(binary, port, scenario, seconds=args.seconds, concurrency=args.concurrency, rps=None)
                cpu_us = (cpu_seconds(proc.proc.pid) - before) / max(1, top["count"]) * 1e6
                paced = ghz(binary, port, scenario, seconds=args.seconds, concurrency=8, rps=args.rate)
                rows.append({"name": name, "top": top, "cpu_us": cpu_us, "paced": paced, "rss": proc.peak_rss_mib()})
            finally:
                proc.stop()
            errors = top["errors"] + paced["errors"]
            # The service exported what it still held when it stopped (the provider's shutdown).
            spans = _count(spans_file) - spans_before
            print(f"{name:<36} {top['rps']:>8.0f} rps  errors={errors}  spans exported={spans}", flush=True)
        sink.stop()
    noop = rows[0]
    print()
    print(
        f"{'target':<36} {'rps':>7} {'x no-op':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10}"
        f" {'x no-op':>7} {f'p99@{args.rate}/s':>11} {'RSS MiB':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<36} {r['top']['rps']:>7.0f} {r['top']['rps'] / noop['top']['rps']:>7.2f}"
            f" {r['top']['p50_ms']:>7.2f} {r['top']['p99_ms']:>7.2f} {r['cpu_us']:>10.0f}"
            f" {noop['cpu_us'] / r['cpu_us']:>7.2f} {r['paced']['p99_ms']:>11.2f} {r['rss']:>8.1f}"
        )
    print("\n'x no-op' for CPU is no-op CPU per request / target CPU per request (1.00 = as cheap as the no-op).")


if __name__ == "__main__":
    asyncio.run(main())
