"""Replicas that scale: 1, 2 and 4 service processes serving cached lookups, and 1 and 2 consumer
instances of one group draining customer.created, on this 2-core machine.

Lookups: N `campaign-service serve` processes (own gRPC ports: the server sets
grpc.so_reuseport=0, so two processes never share a port by accident), pinned with taskset (1
process: core 1, the load generator on core 0, as bench.lookup; 2: cores 0 and 1; 4: two per
core), one load generator per process with the total concurrency split between them, GetVIPTier
served from the Redis cache (auth on, shared rate limit on with a limit never reached). The load
generator is h2load (nghttp2, C) posting a pre-encoded gRPC request (tens of microseconds of CPU
per call; ghz, `--loadgen ghz`, spends about as much CPU per call as the server); calls are counted
by each process's grpc_server_handled_total. Per process and in total: requests/s, CPU (cores busy
over the run), requests per CPU-second; beside them the load generator's, Redis's and the whole
machine's CPU. On a shared machine the servers only get the cores the other tenants leave, so the
scaling per core (requests per server CPU-second, 2 processes / 1 process) is printed beside the
raw ratio, with what it means for 2 processes with a core each.

Events: a backlog of customer.created (over `--merchants` merchants with a default tier) produced
while N service processes (one consumer group; on the cores the scheduler picks, or as above with
--pin-consumers) wait
with the group stable; customer.created gets `--partitions` partitions first (only ever raised;
the bench's own broker when it starts the dependencies itself). Per process: events consumed,
events/s, CPU; in total: events/s consumed, and until every vip_tier.assigned is published (the
relays of the N processes share the outbox's shards); the service's CPU and run-queue wait
(schedstat) per event, PostgreSQL's CPU per event (when CAMPAIGN_TEST_SERVICES_DIR names the
scripts/services directory) and what its backends were doing (pg_stat_activity sampled every 20
ms). `--consumer-config BATCH[:CONCURRENCY]`, repeated, compares consumer settings in one run.

`--pin-stack` (events) gives the run as many cores as it has consumers: with 1 consumer, the
consumer, PostgreSQL, Kafka, Redis, the registry and the bench itself all on core 1; with 2, each
consumer on a core of its own and the rest on both. One consumer cannot use a second core that
PostgreSQL and Kafka already fill (with everything free to move, 1 consumer already keeps both
cores busy), so the ratio of the unpinned runs shows the machine, not the service; pinned, it shows
what a consumer and a core add together: the scaling per core, as the lookups' 2 processes on
2 cores against 1 process on 1.

    .venv/bin/python -m bench.replicas [--seconds 10] [--concurrency 32] [--backlog 20000]
        [--partitions 4] [--only lookups|events] [--loadgen h2load|ghz]
        [--consumer-config 200:8 ...] [--pin-consumers] [--pin-stack] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]
from tests.tokens import mint_token

from bench.events import consumed_total, encoded_events, produce, start_group_at_end
from bench.grpc_suite import PROTO, UNLIMITED, ghz_binary, redis_env, seed, service_env
from bench.harness import (
    ROOT,
    Database,
    Process,
    auth_env,
    drop_database,
    free_port,
    fresh_database,
    machine_shares,
    machine_ticks,
    save_result,
    services,
    start,
)
from bench.points import cluster_cpu_seconds
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.api.gen.campaign.v1 import campaign_service_pb2 as pb
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService

CORES = {1: ["1"], 2: ["0", "1"], 4: ["0", "1", "0", "1"]}
ALL_CORES = set(range(os.cpu_count() or 1))
METHOD = "GetVIPTier"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ghz(binary: str, port: int, request: dict[str, str], token: str, seconds: int, conc: int, cores: str) -> Any:
    args = [
        "taskset", "-c", cores, binary, "--insecure", "--proto", str(PROTO),
        "--import-paths", str(PROTO.parent.parent.parent), "--call", f"campaign.v1.CampaignService/{METHOD}",
        "-d", json.dumps(request), "-m", json.dumps({"authorization": f"Bearer {token}"}),
        "-z", f"{seconds}s", "-c", str(conc), "--connections", "1", "-O", "json", f"127.0.0.1:{port}",
    ]  # fmt: skip
    out, cpu = run_measured(args, timeout=seconds + 60)
    if not out.startswith("{"):
        sys.exit(f"ghz failed: {out[:500]}")
    codes = json.loads(out).get("statusCodeDistribution") or {}
    return {"sent": codes.get("OK", 0), "cpu_s": cpu}


def run_queue_seconds(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a core (schedstat's run delay)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def stack_pids() -> list[int]:
    """The dependencies scripts/services started (CAMPAIGN_TEST_SERVICES_DIR): PostgreSQL's
    postmaster and its children, Kafka, the registry, Redis (each pid file's process)."""
    services_dir = Path(os.environ["CAMPAIGN_TEST_SERVICES_DIR"])
    pids = [int(f.read_text().split()[0]) for f in services_dir.glob("*/*.pid") if f.read_text().strip()]
    postmaster = int((services_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(proc.name))
            except (OSError, ValueError):
                continue  # ended meanwhile
    return [postmaster, *pids]


def pin(pids: list[int], cores: set[int]) -> None:
    """Every thread of each process onto `cores` (threads and children started later inherit it)."""
    for pid in pids:
        try:
            tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cores)


def redis_cpu_seconds() -> float | None:
    """CPU time of the Redis server, when scripts/services started it (CAMPAIGN_TEST_SERVICES_DIR)."""
    try:
        pid = int(Path(os.environ["CAMPAIGN_TEST_SERVICES_DIR"], "redis", "redis.pid").read_text().split()[0])
        return cpu_seconds(pid)
    except (KeyError, OSError, ValueError):
        return None


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def grpc_body(request: dict[str, str]) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, the protobuf."""
    data = pb.GetVIPTierRequest(
        merchant_id=request["merchant_id"], tier_id=request["tier_id"], locale=request["locale"]
    ).SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def run_h2load(body: Path, port: int, token: str, seconds: int, conc: int, cores: str) -> Any:
    """h2load (nghttp2, C, one thread) posting the pre-encoded request over one HTTP/2 connection
    with `conc` streams in flight: a few microseconds of CPU per call where ghz spends tens. It
    does not read gRPC trailers, so the calls are counted (and their status checked) by the server's
    own grpc_server_handled_total."""
    args = [
        "taskset", "-c", cores, "h2load", "-D", str(seconds), "-c", "1", "-m", str(conc), "-t", "1",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"authorization: Bearer {token}", f"http://127.0.0.1:{port}/campaign.v1.CampaignService/{METHOD}",
    ]  # fmt: skip
    out, cpu = run_measured(args, timeout=seconds + 60)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if done is None:
        sys.exit(f"h2load failed: {out[-500:]}")
    return {"sent": int(done.group(1)), "cpu_s": cpu}


def run_measured(args: list[str], *, timeout: float) -> tuple[str, float]:
    """Runs a load generator; its output and the CPU seconds it used (user + system, from wait4)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return out.read().decode("utf-8", "replace"), usage.ru_utime + usage.ru_stime


def load_all(
    loadgen: str,
    binary: str,
    body: Path,
    request: dict[str, str],
    token: str,
    ports: list[int],
    seconds: int,
    *,
    conc: int,
    cores: str,
) -> list[Any]:
    """One load generator per process (port), all at once."""
    if loadgen == "ghz":
        return in_threads([functools.partial(run_ghz, binary, p, request, token, seconds, conc, cores) for p in ports])
    return in_threads([functools.partial(run_h2load, body, p, token, seconds, conc, cores) for p in ports])


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


def handled(http_port: int) -> dict[str, float]:
    """grpc_server_handled_total of GetVIPTier by status code, from the process's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    codes: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and f'grpc_method="{METHOD}"' in line:
            code = re.search(r'grpc_code="([^"]+)"', line)
            if code:
                codes[code.group(1)] = codes.get(code.group(1), 0) + float(line.rsplit(" ", 1)[1])
    return codes


async def lookups(env: dict[str, str], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    binary = ghz_binary() if args.loadgen == "ghz" else ""
    if args.loadgen == "h2load" and not shutil.which("h2load"):  # Debian's nghttp2-client
        subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/loadgen.sh && h2load_install"], check=True)
    db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
    merchant = await seed(db)
    request = {"merchant_id": str(merchant), "tier_id": "gold", "locale": "ar"}
    body = tmp / "GetVIPTier.grpc"
    body.write_bytes(grpc_body(request))
    token = mint_token(merchant, ["tiers:read"], "bench", ttl_s=3600)
    extra = {**auth_env(tmp), **redis_env(env), **UNLIMITED, "CAMPAIGN_DB_POOL_MIN": "1", "CAMPAIGN_DB_POOL_MAX": "4"}
    rows = []
    for n in (1, 2, 4):
        cores = CORES[n]
        loadgen_cores = "0" if n == 1 else "0,1"
        procs: list[Process] = []
        http_ports: list[int] = []
        try:
            for i in range(n):
                port = free_port()
                cmd = [sys.executable, "-m", "campaign_service", "serve"]
                log = tmp / f"lookup-{n}-{i}.log"
                senv = service_env(db, env, port, extra)
                procs.append(start(cmd, port=port, core=int(cores[i]), env=senv, log=log))
                http_ports.append(int(senv["CAMPAIGN_HTTP_PORT"]))
            conc = max(1, args.concurrency // n)

            load = functools.partial(
                load_all,
                args.loadgen,
                binary,
                body,
                request,
                token,
                [p.port for p in procs],
                conc=conc,
                cores=loadgen_cores,
            )
            load(2)  # warm-up: fills the cache, verifies the token once per process
            codes0 = [handled(h) for h in http_ports]
            cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
            redis0, busy0 = redis_cpu_seconds(), machine_busy_seconds()
            t0 = time.monotonic()
            results = load(args.seconds)
            wall = time.monotonic() - t0
            cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
            redis1, busy1 = redis_cpu_seconds(), machine_busy_seconds()
            codes1 = [handled(h) for h in http_ports]
        finally:
            for p in procs:
                p.stop()
        per = []
        for r, c, before, after in zip(results, cpu, codes0, codes1, strict=True):
            codes = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            ok = codes.get("OK", 0)
            per.append(
                {
                    "rps": ok / wall,
                    "cpu_cores": c / wall,
                    "rps_per_cpu_s": ok / max(c, 1e-9),
                    "ok": ok,
                    # ghz and h2load end a run by dropping the calls in flight: up to `conc` of them
                    # may be counted as Cancelled by the server.
                    "errors": sum(v for k, v in codes.items() if k not in ("OK", "CANCELLED", "Cancelled")),
                    "codes": codes,
                    "loadgen_sent": r["sent"],
                    "loadgen_cpu_cores": r["cpu_s"] / wall,
                }
            )
        total = sum(p["ok"] for p in per)
        server_cpu, loadgen_cpu = sum(cpu), sum(r["cpu_s"] for r in results)
        rows.append(
            {
                "processes": n,
                "cores": ",".join(cores),
                "loadgen": args.loadgen,
                "loadgen_cores": loadgen_cores,
                "total_rps": total / wall,
                "total_cpu_cores": server_cpu / wall,
                "rps_per_cpu_s": total / max(server_cpu, 1e-9),
                "loadgen_cpu_cores": loadgen_cpu / wall,
                "redis_cpu_cores": (redis1 - redis0) / wall if redis0 is not None and redis1 is not None else None,
                "machine_busy_cores": (busy1 - busy0) / wall,
                "loadgen_us_per_call": loadgen_cpu / max(total, 1) * 1e6,
                "server_us_per_call": server_cpu / max(total, 1) * 1e6,
                "errors": sum(p["errors"] for p in per),
                "per_process": per,
            }
        )
        if n == 4:
            await drop_database(db)
        print(
            f"lookups  {n} process(es): {total / wall:,.0f} rps, servers {server_cpu / wall:.2f} cores,"
            f" {args.loadgen} {loadgen_cpu / wall:.2f} cores",
            flush=True,
        )
    return rows


def raise_partitions(broker: str, topic: str, partitions: int) -> int:
    admin = AdminClient({"bootstrap.servers": broker})
    current = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    if current < partitions:
        admin.create_partitions([NewPartitions(topic, partitions)])[topic].result(30)
        time.sleep(2)
        return partitions
    return current


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
        for config, n in [(c, n) for c in args.consumer_config for n in (1, 2)]:
            batch, _, concurrency = config.partition(":")
            db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
            merchants = await default_tier_merchants(db, args.merchants, partitions)
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
                **({"CAMPAIGN_LOG_LEVEL": "info"} if args.logs else {}),
                **({"CAMPAIGN_CONSUMER_BATCH_SIZE": batch} if batch and batch != "default" else {}),
                **({"CAMPAIGN_CONSUMER_CONCURRENCY": concurrency} if concurrency else {}),
            }
            procs: list[Process] = []
            if args.pin_stack:  # the stack, and this process, on as many cores as there are consumers
                pin([*stack_pids(), os.getpid()], {int(c) for c in CORES[n]})
            try:
                for i in range(n):
                    port = free_port()
                    senv = service_env(db, env, port, extra)
                    cmd = [sys.executable, "-m", "campaign_service", "serve"]
                    log = tmp / f"events-{n}-{i}.log"
                    core = int(CORES[n][i]) if args.pin_consumers or args.pin_stack else None
                    proc = start(cmd, port=port, core=core, env=senv, log=log)
                    proc.port = int(senv["CAMPAIGN_HTTP_PORT"])  # metrics from here on
                    procs.append(proc)
                stable = group_stable(broker, group, n)
                backlog = await encoded_events(codec, merchants, args.backlog)
                cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
                wait0 = [run_queue_seconds(p.proc.pid) for p in procs]
                pg0, machine0 = cluster_cpu_seconds(), machine_ticks()
                sampler = asyncio.create_task(wait_events(db))
                t0 = time.monotonic()
                # Produced while the group waits, stable: 0.2 s for 30,000 here (~110,000/s), so the
                # bench's producer does not cap the drain. (Produced before the consumers start, the
                # first member drained most of it before the second had joined.)
                await asyncio.to_thread(produce, producer, backlog, None)
                produce_s = time.monotonic() - t0
                consumed = [0.0] * n
                while time.monotonic() - t0 < 300:
                    consumed = [consumed_total(p.port) for p in procs]
                    if sum(consumed) >= args.backlog:
                        break
                    await asyncio.sleep(0.25)  # each look renders the process's metrics: ~1 % of its CPU
                consume_s = time.monotonic() - t0
                cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
                runq = [run_queue_seconds(p.proc.pid) - w for p, w in zip(procs, wait0, strict=True)]
                pg1, machine = cluster_cpu_seconds(), machine_shares(machine0, machine_ticks())
                sampler.cancel()
                waits = await sampler
                published_s = await outbox_drained(db, t0)
            finally:
                for p in procs:
                    p.stop()
                if args.pin_stack:
                    pin([*stack_pids(), os.getpid()], ALL_CORES)
                await drop_database(db)
            rows.append(
                {
                    "config": config,
                    "pinned": args.pin_consumers or args.pin_stack,
                    "stack_cores": len(set(CORES[n])) if args.pin_stack else None,
                    "consumers": n,
                    "partitions": partitions,
                    "group_stable_before_backlog": stable,
                    "backlog_produced_per_s": args.backlog / produce_s,
                    "events_per_s": sum(consumed) / consume_s,
                    "assigned_published_per_s": args.backlog / published_s if published_s else None,
                    "total_cpu_cores": sum(cpu) / consume_s,
                    "events_per_cpu_s": sum(consumed) / max(sum(cpu), 1e-9),
                    "postgres_cpu_cores": (pg1 - pg0) / consume_s if pg0 is not None and pg1 is not None else None,
                    "postgres_backends": waits,
                    "machine_cpu_shares": machine,
                    # Seconds the service's threads were runnable but waited for a core, per event.
                    "run_queue_ms_per_event": 1000 * sum(runq) / max(sum(consumed), 1),
                    "per_process": [
                        {"events": c, "events_per_s": c / consume_s, "cpu_cores": u / consume_s, "run_queue_s": w}
                        for c, u, w in zip(consumed, cpu, runq, strict=True)
                    ],
                }
            )
            print(f"events   {config} {n} consumer(s): {sum(consumed) / consume_s:,.0f} events/s", flush=True)
    finally:
        producer.flush(10)
        await codec.close()
    return rows


async def wait_events(db: Database, every_s: float = 0.02) -> dict[str, float]:
    """What the database's backends do while the backlog drains, sampled from pg_stat_activity
    until cancelled: the mean number of backends in each state (on CPU, waiting on a lock, waiting
    for the client inside a transaction, ...)."""
    conn = await asyncpg.connect(db.superuser_dsn, database=db.name)
    tally: dict[str, int] = {}
    samples = 0
    try:
        while True:
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            samples += 1
            for r in rows:
                if r["state"] == "idle":
                    continue
                what = (
                    f"{r['state']}:{r['wait_event_type']}:{r['wait_event']}"
                    if r["wait_event_type"]
                    else f"{r['state']}:cpu"
                )
                tally[what] = tally.get(what, 0) + 1
            await asyncio.sleep(every_s)
    except asyncio.CancelledError:
        return {k: round(v / max(samples, 1), 3) for k, v in sorted(tally.items(), key=lambda kv: -kv[1])}
    finally:
        await conn.close()


def balanced_merchants(count: int, partitions: int) -> list[uuid.UUID]:
    """Merchant ids whose keys spread evenly over the partitions (the producer's default
    partitioner, librdkafka's consistent_random, takes CRC-32 of the key modulo the partitions):
    with 20 random merchants the consumers' shares were 7,000 against 13,000 events, and a drain
    ends when the busier consumer does."""
    quota = [count // partitions + (1 if i < count % partitions else 0) for i in range(partitions)]
    merchants: list[uuid.UUID] = []
    while len(merchants) < count:
        m = uuid.uuid4()
        p = zlib.crc32(str(m).encode()) % partitions
        if quota[p]:
            quota[p] -= 1
            merchants.append(m)
    return merchants


async def default_tier_merchants(db: Database, count: int, partitions: int) -> list[uuid.UUID]:
    merchants = balanced_merchants(count, partitions)
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
        print(f"\ncached GetVIPTier, load generator {one['loadgen']} (one per process)")
        print(
            f"{'procs':>5} {'cores':>8} {'rps':>7} {'x 1p':>5} {'servers':>7} {'rps/CPU-s':>9} {'x/core':>6}"
            f" {'us/call':>7} {'loadgen':>7} {'lg us':>5} {'redis':>5} {'machine':>7} {'others':>6}  per process (rps @ cores)"
        )
        for r in result["lookups"]:
            per = "  ".join(f"{p['rps']:,.0f}@{p['cpu_cores']:.2f}" for p in r["per_process"])
            redis = r["redis_cpu_cores"] or 0.0
            others = r["machine_busy_cores"] - r["total_cpu_cores"] - r["loadgen_cpu_cores"] - redis
            print(
                f"{r['processes']:>5} {r['cores']:>8} {r['total_rps']:>7,.0f} {r['total_rps'] / one['total_rps']:>5.2f}"
                f" {r['total_cpu_cores']:>7.2f} {r['rps_per_cpu_s']:>9,.0f} {r['rps_per_cpu_s'] / one['rps_per_cpu_s']:>6.2f}"
                f" {r['server_us_per_call']:>7.0f} {r['loadgen_cpu_cores']:>7.2f} {r['loadgen_us_per_call']:>5.0f}"
                f" {redis:>5.2f} {r['machine_busy_cores']:>7.2f} {others:>6.2f}  {per}  errors={r['errors']}"
            )
        print(
            "  servers/loadgen/redis/machine: cores busy over the run (machine: all of its cores, anyone's; others:"
            " the machine's minus ours); x/core: rps per server CPU-second against 1 process; us/call: server"
            " CPU per call"
        )
        two = next((r for r in result["lookups"] if r["processes"] == 2), None)
        if two:
            per_core = two["rps_per_cpu_s"] / one["rps_per_cpu_s"]
            share = 1 + two["loadgen_us_per_call"] / two["server_us_per_call"]
            print(
                f"  2 processes, each with a whole core, vs 1 process with a whole core, at this run's CPU per call:"
                f" {2 * per_core:.2f}x (target 1.8x); with this load generator on the same 2 cores: {2 * per_core / share:.2f}x"
            )
    if result.get("events"):
        one = result["events"][0]
        pinned = (
            "; the stack and the bench on as many cores as consumers (--pin-stack)" if one.get("stack_cores") else ""
        )
        print(f"\ncustomer.created backlog of {result['backlog']} ({one['partitions']} partitions){pinned}")
        print(
            f"{'config':>8} {'consumers':>9} {'events/s':>9} {'x 1':>5} {'service':>7} {'svc ms/ev':>9} {'runq ms/ev':>10}"
            f" {'pg':>5} {'pg ms/ev':>8} {'ev/CPU-s':>8} {'x/core':>6} {'published/s':>11}  per process"
        )
        for r in result["events"]:
            one = next(o for o in result["events"] if o["config"] == r["config"] and o["consumers"] == 1)
            per = "  ".join(
                f"{p['events']:,.0f} ev {p['events_per_s']:,.0f}/s @{p['cpu_cores']:.2f}" for p in r["per_process"]
            )
            pub = f"{r['assigned_published_per_s']:,.0f}" if r["assigned_published_per_s"] else "-"
            pg = r.get("postgres_cpu_cores") or 0.0
            both = (r["total_cpu_cores"] + pg) / r["events_per_s"]  # CPU-s per event, service + PostgreSQL
            both_one = (one["total_cpu_cores"] + (one.get("postgres_cpu_cores") or 0.0)) / one["events_per_s"]
            print(
                f"{r['config']:>8} {r['consumers']:>9} {r['events_per_s']:>9,.0f} {r['events_per_s'] / one['events_per_s']:>5.2f}"
                f" {r['total_cpu_cores']:>7.2f} {1000 * r['total_cpu_cores'] / r['events_per_s']:>9.3f}"
                f" {r['run_queue_ms_per_event']:>10.3f}"
                f" {pg:>5.2f} {1000 * pg / r['events_per_s']:>8.3f} {1 / both:>8,.0f} {both_one / both:>6.2f} {pub:>11}  {per}"
            )
            print(
                f"{'':>9} backlog produced at {r['backlog_produced_per_s']:,.0f}/s; machine busy"
                f" {r['machine_cpu_shares']['busy']:.0%}, steal {r['machine_cpu_shares']['steal']:.0%};"
                f" PostgreSQL backends (mean): {r.get('postgres_backends')}"
            )
        print(
            "  config: consumer batch[:concurrency]; service/pg: cores busy over the drain (pg: every PostgreSQL"
            " process, when CAMPAIGN_TEST_SERVICES_DIR is set); runq: the service's time runnable but waiting for"
            " a core; ev/CPU-s: events per CPU-second of service + PostgreSQL; x/core: that against 1 consumer"
        )
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"seconds": args.seconds, "concurrency": args.concurrency, "backlog": args.backlog}
    with services() as env, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(args.logs or tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
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
    parser.add_argument("--logs", default="", help="keep the service processes' logs in this directory")
    parser.add_argument(
        "--consumer-config",
        action="append",
        help="events: BATCH[:CONCURRENCY] (CAMPAIGN_CONSUMER_BATCH_SIZE, _CONCURRENCY) for 1 and 2 consumers;"
        " repeat it to compare configurations in one run (default: the service's defaults)",
    )
    parser.add_argument(
        "--pin-consumers",
        action="store_true",
        help="events: one core each for the consumer processes, as the lookups (default: left to the scheduler,"
        " like PostgreSQL and Kafka; on a shared machine the core others pin to starves the process pinned there)",
    )
    parser.add_argument(
        "--pin-stack",
        action="store_true",
        help="events: the stack (PostgreSQL, Kafka, Redis, registry, this bench) on as many cores as there are"
        " consumers, each consumer on a core of its own: the scaling per core (needs CAMPAIGN_TEST_SERVICES_DIR)",
    )
    parser.add_argument("--loadgen", default="h2load", choices=["h2load", "ghz"], help="lookups: the load generator")
    parser.add_argument("--only", default="", choices=["", "lookups", "events"])
    args = parser.parse_args()
    args.consumer_config = args.consumer_config or ["default"]
    result = asyncio.run(run(args))
    report(result)
    save_result("replicas", result)


if __name__ == "__main__":
    main()
