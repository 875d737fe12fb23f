"""points.recorded benchmark at scale on the real broker: 10,000 merchants, 1,000,000 customers.

Seeds a fresh database (as the superuser, with COPY: 3 tiers per merchant, every customer holding
the default tier), then runs the service (consumers + relay in-process, Redis fast path on) and
measures:
  1. throughput: a backlog of points.recorded (random customers, earns of 1..400 points: a few
     move up) produced while the service is stopped, then the service started: consumer
     events/s while draining (from its committed offsets), CPU, peak RSS;
  2. latency: points.recorded at a fixed rate for customers new to the service (each one
     assigned a tier, so each one announced); time from produce() until the vip_tier.assigned
     carrying its id as cause_event_id is read back (p50/p99/max), once the relay has published
     what the drain wrote and after a warm-up at that rate.
Writes bench/results/points.json.

    .venv/bin/python -m bench.points [--merchants 10000] [--customers 1000000] [--backlog 200000]
        [--rate 500] [--events 5000] [--warmup 5000] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.events import AssignedWatcher, Bench, cpu_seconds, percentile
from bench.harness import drop_database, fresh_database, machine_shares, machine_ticks, save_result, services
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.schema_registry import registry_client


class CommittedOffsets:
    """Events the service's points consumer has committed (its offsets, read from the broker): the
    progress of a drain without scraping /metrics, which at 10 scrapes/s was ~30 % of the
    service's CPU samples (py-spy) and inflated its CPU per event."""

    def __init__(self, broker: str, group: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
        self._partitions = [TopicPartition(topics.POINTS_RECORDED, p) for p in range(partitions)]

    def total(self) -> int:
        return sum(max(tp.offset, 0) for tp in self._consumer.committed(self._partitions, timeout=5))

    def close(self) -> None:
        self._consumer.close()


def cluster_cpu_seconds() -> float | None:
    """CPU time of every PostgreSQL process of the cluster the tests run (children of its
    postmaster, finished ones included via cutime/cstime), when scripts/services started it here."""
    services_dir = os.environ.get("CAMPAIGN_TEST_SERVICES_DIR")
    if not services_dir:
        return None
    pid_file = Path(services_dir, "postgres", "pgdata", "postmaster.pid")
    if not pid_file.exists():
        return None
    postmaster = int(pid_file.read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(proc.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


async def outbox_drained(superuser_dsn: str, db_name: str, within_s: float) -> None:
    conn = await asyncpg.connect(superuser_dsn, database=db_name)
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if not await conn.fetchval("SELECT count(*) FROM outbox_events WHERE published_at IS NULL"):
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def _copy_rows(rows: list[tuple[Any, ...]]) -> io.BytesIO:
    return io.BytesIO("".join("\t".join(str(v) for v in r) + "\n" for r in rows).encode())


async def seed(superuser_dsn: str, db_name: str, merchants: list[uuid.UUID], customers: int) -> list[tuple[Any, Any]]:
    """Merchants, 3 tiers each (basic 0 default, silver 1000, gold 5000), `customers` customers on
    basic; returns the (merchant, customer) pairs. Triggers off while seeding (no history rows)."""
    conn = await asyncpg.connect(superuser_dsn, database=db_name)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.copy_records_to_table("merchants", records=[(m,) for m in merchants], columns=["id"])
        tiers = []
        for m in merchants:
            tiers += [
                (m, "basic", "Basic", 0, True),
                (m, "silver", "Silver", 1000, False),
                (m, "gold", "Gold", 5000, False),
            ]
        await conn.copy_records_to_table(
            "vip_tiers", records=tiers, columns=["merchant_id", "tier_id", "name", "min_points", "is_default"]
        )
        pairs = [(merchants[i % len(merchants)], uuid.uuid4()) for i in range(customers)]
        now = datetime.now(UTC)
        for start in range(0, customers, 200_000):
            await conn.copy_records_to_table(
                "customer_tiers",
                records=[
                    (m, c, "basic", now, "customer.created", ["basic"]) for m, c in pairs[start : start + 200_000]
                ],
                columns=["merchant_id", "customer_id", "tier_id", "assigned_at", "source", "held_tiers"],
            )
        await conn.execute("SET session_replication_role = DEFAULT")
        # The first vacuum of a million bulk-loaded rows (hint bits, visibility map) now rather
        # than by autovacuum in a measured window: a live table was vacuumed long ago.
        await conn.execute("VACUUM ANALYZE")
        return pairs
    finally:
        await conn.close()


async def encoded(
    codec: AvroWireCodec, pairs: list[tuple[Any, Any]], n: int, rng: random.Random, *, in_order: bool = False
) -> list[tuple[str, str, bytes]]:
    """n earns of random customers among `pairs` (or of pairs[0..n) in order: one each)."""
    out = []
    now_ms = int(time.time() * 1000)
    for i in range(n):
        m, c = pairs[i] if in_order else pairs[rng.randrange(len(pairs))]
        event_id, q = str(uuid.uuid4()), rng.randint(1, 400)
        payload = {
            "event_id": event_id,
            "merchant_id": str(m),
            "customer_id": str(c),
            "entry_id": str(uuid.uuid4()),
            "type": "earn",
            "points": q,
            "qualifying_points": q,
            "reverses_entry_id": None,
            "occurred_at": now_ms - rng.randint(0, 86_400_000),
            "correlation_id": None,
        }
        out.append((event_id, f"{m}:{c}", await codec.encode(topics.POINTS_RECORDED, payload)))
    return out


def produce(producer: Producer, events: list[tuple[str, str, bytes]], rate: float | None) -> dict[str, float]:
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    for i, (event_id, key, value) in enumerate(events):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topics.POINTS_RECORDED, value, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        sent[event_id] = time.monotonic()
        producer.poll(0)
    producer.flush(60)
    return sent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(13)
    with services("postgres redis kafka registry") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchants = [uuid.uuid4() for _ in range(args.merchants)]
        t0 = time.monotonic()
        pairs = await seed(db.superuser_dsn, db.name, merchants, args.customers)
        seeded_s = time.monotonic() - t0
        # Playing the Points service, the owner of points.recorded and its subject.
        codec = AvroWireCodec(
            registry_client(env["CAMPAIGN_SCHEMA_REGISTRY_URL"]),
            produces={topics.POINTS_RECORDED: schema_text(topics.POINTS_RECORDED)},
        )
        producer = Producer(
            {"bootstrap.servers": env["KAFKA_BROKER"], "linger.ms": 5, "acks": "all", "enable.idempotence": True}
        )
        bench = Bench(env, db, "warning", Path(tempfile.mkdtemp(prefix="bench-points.")))
        bench.skip_earlier_customer_events()
        result: dict[str, Any] = {
            "merchants": args.merchants,
            "customers": args.customers,
            "seed_s": round(seeded_s, 1),
            "batch_size": args.batch_size,
        }
        watcher = AssignedWatcher(env["KAFKA_BROKER"])
        bench.extra_env = {
            "CAMPAIGN_POINTS_BATCH_SIZE": str(args.batch_size),
            **dict(kv.split("=", 1) for kv in args.env),
        }
        recreate_topic(env["KAFKA_BROKER"])  # events of earlier runs would be dead letters here
        service = None
        try:
            backlog = await encoded(codec, pairs, args.backlog, rng)
            await asyncio.to_thread(produce, producer, backlog, None)
            service = bench.start_service()
            progress = CommittedOffsets(env["KAFKA_BROKER"], f"{bench.group}.points", PARTITIONS)
            db_cpu_start, machine0 = cluster_cpu_seconds(), machine_ticks()
            samples: list[tuple[float, float, float]] = []
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                samples.append((time.monotonic(), progress.total(), cpu_seconds(service.proc.pid)))
                if samples[-1][1] >= args.backlog:
                    break
                await asyncio.sleep(0.1)
            started, _, cpu_start = next(s for s in samples if s[1] > 0)
            done_at, total, cpu_end = samples[-1]
            db_cpu_end, machine = cluster_cpu_seconds(), machine_shares(machine0, machine_ticks())
            progress.close()
            result["throughput"] = {
                "backlog": args.backlog,
                "consumed": total,
                "consumer_events_per_s": total / max(done_at - started, 1e-9),
                "service_cpu_share_while_draining": (cpu_end - cpu_start) / max(done_at - started, 1e-9),
                "peak_rss_mib": service.peak_rss_mib(),
                # CPU per event of the service and of PostgreSQL (whole drain, start-up included):
                # what the rate would be with two idle cores, on a machine shared with others.
                "service_cpu_ms_per_event": (cpu_end - cpu_start) * 1000 / max(total, 1),
                "postgres_cpu_ms_per_event": (
                    (db_cpu_end - db_cpu_start) * 1000 / max(total, 1)
                    if db_cpu_start is not None and db_cpu_end is not None
                    else None
                ),
                "load_average": os.getloadavg(),
                "machine_cpu_shares": machine,
            }

            # Latency: new customers of known merchants (each gets a first tier, so each is announced).
            def fresh(n: int) -> list[tuple[Any, Any]]:
                return [(merchants[rng.randrange(len(merchants))], uuid.uuid4()) for _ in range(n)]

            # Steady state, not the backlog's aftermath: the relay has published what the drain
            # wrote, then a warm-up at the rate (the drain's moves still being published, and the
            # vacuum of 100,000 new rows, doubled the p99 in the same run).
            await outbox_drained(db.superuser_dsn, db.name, within_s=180)
            warm = await encoded(codec, fresh(args.warmup), args.warmup, rng, in_order=True)
            await asyncio.to_thread(produce, producer, warm, args.rate)
            watcher.wait_for([e[0] for e in warm], 120)
            events = await encoded(codec, fresh(args.events), args.events, rng, in_order=True)
            sent = await asyncio.to_thread(produce, producer, events, args.rate)
            complete = watcher.wait_for(list(sent), 120)
            lat = [(watcher.arrived[i] - t) * 1000 for i, t in sent.items() if i in watcher.arrived]
            result["latency"] = {
                "events": args.events,
                "rate_per_s": args.rate,
                "received": len(lat),
                "complete": complete,
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "max_ms": max(lat),
            }
        finally:
            if service is not None:
                service.stop()
            watcher.close()
            producer.flush(5)
            await codec.close()
        await drop_database(db)  # a million customers: left behind, autovacuum visits them in later runs
    return result


PARTITIONS = 3


def recreate_topic(broker: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for f in admin.delete_topics([topics.POINTS_RECORDED], operation_timeout=30).values():
        with contextlib.suppress(KafkaException):  # it did not exist
            f.result()
    for _ in range(60):
        futures = admin.create_topics([NewTopic(topics.POINTS_RECORDED, partitions, 1)])
        try:
            futures[topics.POINTS_RECORDED].result()
            return
        except KafkaException:
            time.sleep(0.5)  # deletion still in progress
    raise RuntimeError("could not recreate the points.recorded topic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=5000, help="events at the rate before the measured ones")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the service (e.g. PYTHONPATH=<other checkout>/src)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    thr, lat = result["throughput"], result["latency"]
    print(
        f"seed {result['merchants']} merchants, {result['customers']} customers in {result['seed_s']} s\n"
        f"throughput  backlog {thr['backlog']}: consumer {thr['consumer_events_per_s']:.0f} events/s, service CPU"
        f" {thr['service_cpu_share_while_draining']:.0%} of a core, peak RSS {thr['peak_rss_mib']:.0f} MiB\n"
        f"  CPU per event: service {thr['service_cpu_ms_per_event']:.3f} ms, PostgreSQL {thr['postgres_cpu_ms_per_event'] or 0:.3f} ms"
        f" (machine load average {thr['load_average'][0]:.1f}; over the drain busy"
        f" {thr['machine_cpu_shares']['busy']:.0%}, steal {thr['machine_cpu_shares']['steal']:.0%})\n"
        f"latency  points.recorded -> vip_tier.assigned at {lat['rate_per_s']:.0f}/s, {lat['received']}/{lat['events']}:"
        f" p50 {lat['p50_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  max {lat['max_ms']:.1f} ms"
    )
    save_result("points", result)


if __name__ == "__main__":
    main()
