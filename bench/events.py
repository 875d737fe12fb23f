"""Event pipeline benchmark on the real broker: customer.created -> vip_tier.assigned.

Runs the service (consumer + relay in-process, Redis fast path on) against a fresh database and
measures:
  1. latency: customer.created produced at a fixed rate (after a warm-up at that rate); time from
     produce() until the vip_tier.assigned carrying its id as cause_event_id is read back
     (p50/p90/p99/max);
  2. throughput: a backlog of customer.created produced while the service is stopped, then the
     service started: consumer events/s while draining (from its metrics) and the end-to-end
     rate until every vip_tier.assigned is on the topic.
Writes bench/results/events.json.

    .venv/bin/python -m bench.events [--warmup 1000] [--events 2000] [--rate 200] [--backlog 5000]
        [--merchants 50] [--log-level info]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.harness import Database, Process, auth_env, free_port, fresh_database, save_result, services, start
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.tiers import TierService


class AssignedWatcher:
    """Reads vip_tier.assigned from its current end in a thread; records when each cause arrived
    (`arrived`: monotonic; `stamps`: wall clock and the message's CreateTime, the relay's produce())."""

    def __init__(self, broker: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": broker, "group.id": f"bench-{uuid.uuid4()}", "enable.auto.commit": False}
        )
        topic = topics.VIP_TIER_ASSIGNED
        start_at = []
        for p in self._consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start_at.append(TopicPartition(topic, p, high))
        self._consumer.assign(start_at)
        self.arrived: dict[str, float] = {}
        self.stamps: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            now, wall = time.monotonic(), time.time()
            for m in [first, *self._consumer.consume(500, 0)]:
                if m.error() is None:
                    cause = dict(m.headers() or []).get("cause_event_id")
                    if isinstance(cause, bytes):
                        self.arrived.setdefault(cause.decode(), now)
                        self.stamps.setdefault(cause.decode(), (wall, m.timestamp()[1] / 1000))

    def wait_for(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.arrived for i in ids):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def consumed_total(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("campaign_events_consumed_total{")
    )


async def encoded_events(codec: AvroWireCodec, merchants: list[uuid.UUID], n: int) -> list[tuple[str, str, bytes]]:
    """(event_id, key, value) of n customer.created spread over the merchants."""
    out = []
    for i in range(n):
        merchant, event_id = merchants[i % len(merchants)], str(uuid.uuid4())
        payload = {"event_id": event_id, "customer_id": str(uuid.uuid4()), "merchant_id": str(merchant)}
        out.append((event_id, str(merchant), await codec.encode(topics.CUSTOMER_CREATED, payload)))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


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


class Bench:
    def __init__(self, env: dict[str, str], db: Database, log_level: str, tmp: Path) -> None:
        self.env, self.db, self.log_level, self.tmp = env, db, log_level, tmp
        self.group = f"bench-campaign-{uuid.uuid4().hex[:8]}"
        self.extra_env: dict[str, str] = {}  # more settings for the service (bench.points)

    def skip_earlier_customer_events(self) -> None:
        """The service's customer.created and customer.deleted groups start at those topics' ends.
        Other benches leave their events there (bench.replicas: 20,000 a run, of merchants whose
        databases are gone): a new group read them from the start and dead-lettered them while the
        measured window ran (in bench.points_latency, the first round's service CPU per event was
        1.2-1.8 ms against 0.8-1.0 in later rounds, which shared the group)."""
        broker = self.env["KAFKA_BROKER"]
        start_group_at_end(broker, self.group, topics.CUSTOMER_CREATED)
        start_group_at_end(broker, f"{self.group}.erasure", topics.CUSTOMER_DELETED)

    def start_service(self) -> Process:
        http_port = free_port()
        env = {
            k: v for k, v in self.env.items() if not k.startswith("CAMPAIGN_") and k not in ("REDIS_HOST", "AUTH_HOST")
        }
        redis_host, redis_port = self.env["CAMPAIGN_TEST_REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
        env |= {
            "CAMPAIGN_DB_DSN": self.db.app_dsn,
            "CAMPAIGN_DB_OWNER_DSN": self.db.owner_dsn,
            "CAMPAIGN_RELAY_DB_DSN": self.db.relay_dsn,
            "CAMPAIGN_BIND_HOST": "127.0.0.1",
            "CAMPAIGN_GRPC_PORT": str(free_port()),
            "CAMPAIGN_HTTP_PORT": str(http_port),
            "CAMPAIGN_SCHEMA_REGISTRY_URL": self.env["CAMPAIGN_SCHEMA_REGISTRY_URL"],
            "CAMPAIGN_KAFKA_CONSUMER_GROUP": self.group,
            "CAMPAIGN_LOG_LEVEL": self.log_level,
            "REDIS_HOST": redis_host,
            "CAMPAIGN_REDIS_PORT": redis_port,
            **auth_env(self.tmp),
            **self.extra_env,
        }
        log = self.tmp / f"service-{http_port}.log"
        return start([sys.executable, "-m", "campaign_service", "serve"], port=http_port, core=None, env=env, log=log)


def produce(producer: Producer, events: list[tuple[str, str, bytes]], rate: float | None) -> dict[str, float]:
    """Produces the events (paced at `rate`/s when given); returns when each produce() was called."""
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    for i, (event_id, key, value) in enumerate(events):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topics.CUSTOMER_CREATED, value, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        sent[event_id] = time.monotonic()
        producer.poll(0)
    producer.flush(30)
    return sent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with services("postgres redis kafka registry") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        pool = await create_pool(db.app_dsn, min_size=1, max_size=4)
        merchants = [uuid.uuid4() for _ in range(args.merchants)]
        owner = await asyncpg.connect(db.owner_dsn)
        await owner.executemany("INSERT INTO merchants (id) VALUES ($1)", [(m,) for m in merchants])
        await owner.close()
        tiers = TierService(PgUnitOfWork(pool))
        for m in merchants:
            await tiers.create(m, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
        await pool.close()
        # Playing the Core Service, the owner of customer.created and its subject.
        core_schema = schema_text(topics.CUSTOMER_CREATED)
        codec = AvroWireCodec(
            registry_client(env["CAMPAIGN_SCHEMA_REGISTRY_URL"]), produces={topics.CUSTOMER_CREATED: core_schema}
        )
        broker = env["KAFKA_BROKER"]
        producer = Producer({"bootstrap.servers": broker, "linger.ms": 0, "acks": "all", "enable.idempotence": True})
        bench = Bench(env, db, args.log_level, Path(tempfile.mkdtemp(prefix="bench-events.")))
        bench.skip_earlier_customer_events()  # only this run's events count
        watcher = AssignedWatcher(broker)
        result: dict[str, Any] = {"merchants": args.merchants, "log_level": args.log_level, "warmup": args.warmup}
        service = bench.start_service()
        try:
            # At the measured rate: the dependencies were just started, and a cold Kafka broker
            # (JVM) alone put p99 over 200 ms in the first seconds, whatever the service did.
            warm = await encoded_events(codec, merchants, args.warmup)
            await asyncio.to_thread(produce, producer, warm, args.rate)
            assert watcher.wait_for([e[0] for e in warm], 60), "warm-up events did not come back"

            events = await encoded_events(codec, merchants, args.events)
            sent = await asyncio.to_thread(produce, producer, events, args.rate)
            complete = watcher.wait_for(list(sent), 120)
            lat = [(watcher.arrived[i] - t) * 1000 for i, t in sent.items() if i in watcher.arrived]
            result["latency"] = {
                "events": args.events,
                "rate_per_s": args.rate,
                "received": len(lat),
                "complete": complete,
                "p50_ms": percentile(lat, 50),
                "p90_ms": percentile(lat, 90),
                "p99_ms": percentile(lat, 99),
                "max_ms": max(lat),
                "mean_ms": statistics.fmean(lat),
            }
            service.stop()

            backlog = await encoded_events(codec, merchants, args.backlog)
            await asyncio.to_thread(produce, producer, backlog, None)
            service = bench.start_service()
            http_port = service.port
            samples: list[tuple[float, float, float]] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                samples.append((time.monotonic(), consumed_total(http_port), cpu_seconds(service.proc.pid)))
                if samples[-1][1] >= args.backlog:
                    break
                await asyncio.sleep(0.1)
            started, _, cpu_start = next(s for s in samples if s[1] > 0)
            done_at, _, cpu_end = next(s for s in samples if s[1] >= args.backlog)
            all_out = watcher.wait_for([e[0] for e in backlog], 300)
            last_out = max(watcher.arrived[e[0]] for e in backlog if e[0] in watcher.arrived)
            result["throughput"] = {
                "backlog": args.backlog,
                "consumer_events_per_s": args.backlog / max(done_at - started, 1e-9),
                "end_to_end_events_per_s": args.backlog / max(last_out - started, 1e-9),
                "all_assigned_events_out": all_out,
                "service_cpu_share_while_draining": (cpu_end - cpu_start) / max(done_at - started, 1e-9),
                "peak_rss_mib": service.peak_rss_mib(),
            }
        finally:
            service.stop()
            watcher.close()
            producer.flush(5)
            await codec.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--warmup", type=int, default=1000, help="latency phase: events sent at --rate first, not measured (min 1)"
    )
    parser.add_argument("--events", type=int, default=2000, help="latency phase: events to send")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase: events per second")
    parser.add_argument("--backlog", type=int, default=5000, help="throughput phase: backlog size")
    parser.add_argument("--merchants", type=int, default=50)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    result = asyncio.run(run(args))
    lat, thr = result["latency"], result["throughput"]
    print(
        f"latency  customer.created -> vip_tier.assigned at {lat['rate_per_s']:.0f}/s (after {result['warmup']}"
        f" warm-up), {lat['received']}/{lat['events']} events: p50 {lat['p50_ms']:.1f} ms  p90 {lat['p90_ms']:.1f} ms"
        f"  p99 {lat['p99_ms']:.1f} ms  max {lat['max_ms']:.1f} ms"
    )
    print(
        f"throughput  backlog {thr['backlog']}: consumer {thr['consumer_events_per_s']:.0f} events/s,"
        f" end to end {thr['end_to_end_events_per_s']:.0f} events/s, service CPU"
        f" {thr['service_cpu_share_while_draining']:.0%} of a core, peak RSS {thr['peak_rss_mib']:.0f} MiB"
    )
    save_result("events", result)


if __name__ == "__main__":
    main()
