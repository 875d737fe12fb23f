"""Replicas that scale: 1, 2 and 4 service processes serving cached lookups, and 1 and 2 consumer
instances of one group draining customer.created, on this 2-core machine.

Lookups: N `campaign-service serve` processes (own gRPC ports: the server sets
grpc.so_reuseport=0, so two processes never share a port by accident), pinned with taskset (1
process: core 1, the load generator on core 0, as bench.lookup; 2: cores 0 and 1; 4: two per
core), one ghz per process with the total concurrency split between them, GetVIPTier served from
the Redis cache (auth on, shared rate limit on with a limit never reached). Per process and in
total: requests/s, the process's CPU (cores busy over the run), and requests per CPU-second.
With the load generator on the same two cores, the total of 2 processes cannot double that of one
process that had a core to itself, so the scaling per core (requests per CPU-second of the
servers, 2 processes / 1 process) is printed beside the raw ratio.

Events: a backlog of customer.created (over `--merchants` merchants with a default tier) produced
while N service processes (one consumer group, cores as above) wait with the group stable;
customer.created gets `--partitions` partitions first (only ever raised; the bench's own broker
when it starts the dependencies itself). Per process: events consumed, events/s, CPU; in total:
events/s consumed, and until every vip_tier.assigned is published (the relays of the N processes
share the outbox's shards).

    .venv/bin/python -m bench.replicas [--seconds 10] [--concurrency 32] [--backlog 20000]
        [--partitions 4] [--only lookups|events]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]
from tests.tokens import mint_token

from bench.events import consumed_total, encoded_events, produce
from bench.grpc_suite import PROTO, UNLIMITED, ghz_binary, redis_env, seed, service_env
from bench.harness import Database, Process, auth_env, free_port, fresh_database, save_result, services, start
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService

CORES = {1: ["1"], 2: ["0", "1"], 4: ["0", "1", "0", "1"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ghz(binary: str, port: int, request: dict[str, str], token: str, seconds: int, conc: int, cores: str) -> Any:
    args = [
        "taskset", "-c", cores, binary, "--insecure", "--proto", str(PROTO),
        "--import-paths", str(PROTO.parent.parent.parent), "--call", "campaign.v1.CampaignService/GetVIPTier",
        "-d", json.dumps(request), "-m", json.dumps({"authorization": f"Bearer {token}"}),
        "-z", f"{seconds}s", "-c", str(conc), "--connections", "1", "-O", "json", f"127.0.0.1:{port}",
    ]  # fmt: skip
    out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=seconds + 60)
    if not out.stdout.startswith("{"):
        sys.exit(f"ghz failed: {out.stderr.strip()[:500]}")
    report = json.loads(out.stdout)
    codes = report.get("statusCodeDistribution") or {}
    # ghz ends the run by cancelling the calls in flight: up to `conc` "Canceled" are not failures.
    errors = {k: v for k, v in codes.items() if k not in ("OK", "Canceled")}
    return {"count": codes.get("OK", 0), "errors": sum(errors.values()), "codes": codes}


def ghz_all(
    binary: str, ports: list[int], request: dict[str, str], token: str, seconds: int, *, conc: int, cores: str
) -> list[Any]:
    """One ghz per port, all at once."""
    return in_threads([functools.partial(run_ghz, binary, p, request, token, seconds, conc, cores) for p in ports])


def in_threads(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


async def lookups(env: dict[str, str], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    binary = ghz_binary()
    db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
    merchant = await seed(db)
    request = {"merchant_id": str(merchant), "tier_id": "gold", "locale": "ar"}
    token = mint_token(merchant, ["tiers:read"], "bench", ttl_s=3600)
    extra = {**auth_env(tmp), **redis_env(env), **UNLIMITED, "CAMPAIGN_DB_POOL_MIN": "1", "CAMPAIGN_DB_POOL_MAX": "4"}
    rows = []
    for n in (1, 2, 4):
        cores = CORES[n]
        loadgen_cores = "0" if n == 1 else "0,1"
        procs: list[Process] = []
        try:
            for i in range(n):
                port = free_port()
                cmd = [sys.executable, "-m", "campaign_service", "serve"]
                log = tmp / f"lookup-{n}-{i}.log"
                procs.append(start(cmd, port=port, core=int(cores[i]), env=service_env(db, env, port, extra), log=log))
            conc = max(1, args.concurrency // n)

            ports = [p.port for p in procs]
            load = functools.partial(ghz_all, binary, ports, request, token, conc=conc, cores=loadgen_cores)
            load(2)  # warm-up: fills the cache, verifies the token once per process
            cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
            t0 = time.monotonic()
            results = load(args.seconds)
            wall = time.monotonic() - t0
            cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        finally:
            for p in procs:
                p.stop()
        per = [
            {
                "rps": r["count"] / wall,
                "cpu_cores": c / wall,
                "rps_per_cpu_s": r["count"] / max(c, 1e-9),
                "errors": r["errors"],
                "codes": r["codes"],
            }
            for r, c in zip(results, cpu, strict=True)
        ]  # fmt: skip
        total = sum(r["count"] for r in results)
        rows.append(
            {
                "processes": n,
                "cores": ",".join(cores),
                "total_rps": total / wall,
                "total_cpu_cores": sum(cpu) / wall,
                "rps_per_cpu_s": total / max(sum(cpu), 1e-9),
                "errors": sum(r["errors"] for r in results),
                "per_process": per,
            }
        )
        print(f"lookups  {n} process(es): {total / wall:,.0f} rps, {sum(cpu) / wall:.2f} cores", flush=True)
    return rows


def raise_partitions(broker: str, topic: str, partitions: int) -> int:
    admin = AdminClient({"bootstrap.servers": broker})
    current = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    if current < partitions:
        admin.create_partitions([NewPartitions(topic, partitions)])[topic].result(30)
        time.sleep(2)
        return partitions
    return current


def start_group_at_end(broker: str, group: str, topic: str) -> None:
    """Commits the topic's end offsets for a new group: its members read only what comes next,
    not the events earlier runs left on the topic."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    try:
        ends = []
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends.append(TopicPartition(topic, p, high))
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def group_stable(broker: str, group: str, members: int, timeout: float = 60) -> bool:
    admin = AdminClient({"bootstrap.servers": broker})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(10)
            if len(desc.members) == members and str(desc.state).endswith("STABLE"):
                return True
        except Exception:  # the group does not exist yet
            pass
        time.sleep(0.5)
    return False


async def events(env: dict[str, str], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    broker = env["KAFKA_BROKER"]
    partitions = raise_partitions(broker, topics.CUSTOMER_CREATED, args.partitions)
    codec = AvroWireCodec(
        registry_client(env["CAMPAIGN_SCHEMA_REGISTRY_URL"]),
        produces={topics.CUSTOMER_CREATED: schema_text(topics.CUSTOMER_CREATED)},
    )
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 5, "acks": "all", "enable.idempotence": True})
    rows = []
    try:
        for n in (1, 2):
            db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
            merchants = await default_tier_merchants(db, args.merchants)
            group = f"bench-replicas-{uuid.uuid4().hex[:8]}"
            start_group_at_end(broker, group, topics.CUSTOMER_CREATED)
            start_group_at_end(broker, f"{group}.points", topics.POINTS_RECORDED)  # the service's other groups
            start_group_at_end(broker, f"{group}.erasure", topics.CUSTOMER_DELETED)
            extra = {
                **auth_env(tmp),
                **redis_env(env),
                "KAFKA_BROKER": broker,
                "CAMPAIGN_SCHEMA_REGISTRY_URL": env["CAMPAIGN_SCHEMA_REGISTRY_URL"],
                "CAMPAIGN_KAFKA_CONSUMER_GROUP": group,
                "CAMPAIGN_SCHEDULER_INTERVAL_S": "0",
            }
            procs: list[Process] = []
            try:
                for i in range(n):
                    port = free_port()
                    senv = service_env(db, env, port, extra)
                    cmd = [sys.executable, "-m", "campaign_service", "serve"]
                    log = tmp / f"events-{n}-{i}.log"
                    proc = start(cmd, port=port, core=int(CORES[n][i]), env=senv, log=log)
                    proc.port = int(senv["CAMPAIGN_HTTP_PORT"])  # metrics from here on
                    procs.append(proc)
                stable = group_stable(broker, group, n)
                backlog = await encoded_events(codec, merchants, args.backlog)
                cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
                t0 = time.monotonic()
                await asyncio.to_thread(produce, producer, backlog, None)
                consumed = [0.0] * n
                while time.monotonic() - t0 < 300:
                    consumed = [consumed_total(p.port) for p in procs]
                    if sum(consumed) >= args.backlog:
                        break
                    await asyncio.sleep(0.1)
                consume_s = time.monotonic() - t0
                cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
                published_s = await outbox_drained(db, t0)
            finally:
                for p in procs:
                    p.stop()
            rows.append(
                {
                    "consumers": n,
                    "partitions": partitions,
                    "group_stable_before_backlog": stable,
                    "events_per_s": sum(consumed) / consume_s,
                    "assigned_published_per_s": args.backlog / published_s if published_s else None,
                    "total_cpu_cores": sum(cpu) / consume_s,
                    "events_per_cpu_s": sum(consumed) / max(sum(cpu), 1e-9),
                    "per_process": [
                        {"events": c, "events_per_s": c / consume_s, "cpu_cores": u / consume_s}
                        for c, u in zip(consumed, cpu, strict=True)
                    ],
                }
            )
            print(f"events   {n} consumer(s): {sum(consumed) / consume_s:,.0f} events/s", flush=True)
    finally:
        producer.flush(10)
        await codec.close()
    return rows


async def default_tier_merchants(db: Database, count: int) -> list[uuid.UUID]:
    merchants = [uuid.uuid4() for _ in range(count)]
    owner = await asyncpg.connect(db.owner_dsn)
    await owner.executemany("INSERT INTO merchants (id) VALUES ($1)", [(m,) for m in merchants])
    await owner.close()
    pool = await create_pool(db.app_dsn, min_size=1, max_size=2)
    tiers = TierService(PgUnitOfWork(pool))
    for m in merchants:
        await tiers.create(m, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
    await pool.close()
    return merchants


async def outbox_drained(db: Database, t0: float, timeout: float = 120) -> float | None:
    """Seconds from t0 until no vip_tier.assigned waits in the outbox."""
    conn = await asyncpg.connect(db.superuser_dsn, database=db.name)
    try:
        while time.monotonic() - t0 < timeout:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox_events WHERE published_at IS NULL)"):
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return None
    finally:
        await conn.close()


def report(result: dict[str, Any]) -> None:
    if result.get("lookups"):
        one = result["lookups"][0]
        print("\ncached GetVIPTier")
        print(
            f"{'procs':>5} {'cores':>8} {'rps':>8} {'x 1p':>6} {'CPU cores':>9} {'rps/CPU-s':>9} {'x/core':>7}  per process (rps @ cores)"
        )
        for r in result["lookups"]:
            per = "  ".join(f"{p['rps']:,.0f}@{p['cpu_cores']:.2f}" for p in r["per_process"])
            print(
                f"{r['processes']:>5} {r['cores']:>8} {r['total_rps']:>8,.0f} {r['total_rps'] / one['total_rps']:>6.2f}"
                f" {r['total_cpu_cores']:>9.2f} {r['rps_per_cpu_s']:>9,.0f}"
                f" {r['rps_per_cpu_s'] / one['rps_per_cpu_s']:>7.2f}  {per}  errors={r['errors']}"
            )
    if result.get("events"):
        one = result["events"][0]
        print(f"\ncustomer.created backlog of {result['backlog']} ({one['partitions']} partitions)")
        print(
            f"{'consumers':>9} {'events/s':>9} {'x 1':>5} {'CPU cores':>9} {'events/CPU-s':>12} {'x/core':>7} {'published/s':>11}  per process"
        )
        for r in result["events"]:
            per = "  ".join(
                f"{p['events']:,.0f} ev {p['events_per_s']:,.0f}/s @{p['cpu_cores']:.2f}" for p in r["per_process"]
            )
            pub = f"{r['assigned_published_per_s']:,.0f}" if r["assigned_published_per_s"] else "-"
            print(
                f"{r['consumers']:>9} {r['events_per_s']:>9,.0f} {r['events_per_s'] / one['events_per_s']:>5.2f}"
                f" {r['total_cpu_cores']:>9.2f} {r['events_per_cpu_s']:>12,.0f}"
                f" {r['events_per_cpu_s'] / one['events_per_cpu_s']:>7.2f} {pub:>11}  {per}"
            )
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"seconds": args.seconds, "concurrency": args.concurrency, "backlog": args.backlog}
    with services() as env, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.only in ("", "lookups"):
            result["lookups"] = await lookups(env, args, tmp)
        if args.only in ("", "events"):
            result["events"] = await events(env, args, tmp)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32, help="lookups: total, split over the processes")
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=20, help="events: merchants (one transaction each per batch)")
    parser.add_argument("--partitions", type=int, default=4, help="customer.created partitions (raised, never lowered)")
    parser.add_argument("--only", default="", choices=["", "lookups", "events"])
    args = parser.parse_args()
    result = asyncio.run(run(args))
    report(result)
    save_result("replicas", result)


if __name__ == "__main__":
    main()
