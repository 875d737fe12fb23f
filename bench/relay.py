"""The outbox relay's ceiling: a backlog of vip_tier.assigned rows published to the real broker.

Starts N `campaign-service relay` processes (the relay as its own deployment) against a fresh
database, waits until each is idle, then commits a backlog of `--events` vip_tier.assigned rows
(COPY in one transaction, spread over `--merchants` x customers keys; the relays see none of it
before the COMMIT) and waits until every row is marked published. Prints:
  * events/s: rows / (last published_at - the COMMIT), both by the database's clock;
  * relay CPU ms/event: user + system CPU of the relay processes (every thread: asyncio loop,
    librdkafka) over the drain, per event;
  * PG ms/event: CPU of every PostgreSQL process of the cluster over the drain, per event (when
    scripts/services runs it here; autovacuum of the drained rows included);
  * broker ms/event: the broker's CPU (same condition), and the messages the topic gained (Kafka:
    its offsets; RabbitMQ: its queues' message counts; the queues are purged afterwards).
Wall figures move with the shared machine's load; the CPU per event does much less.
`--bus rabbitmq` runs the relays on RabbitMQ (CAMPAIGN_EVENT_BUS) with `--queues` queues per topic.
Writes bench/results/relay.json (relay-rabbitmq.json).

    source /tmp/svc/env; export CAMPAIGN_TEST_SERVICES_DIR=/tmp/svc
    .venv/bin/python -m bench.relay [--events 200000] [--relays 1] [--batch 1000] [--merchants 1000]
        [--linger-ms 5] [--cores 0,1] [--bus kafka|rabbitmq] [--queues 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from confluent_kafka import Consumer, TopicPartition

from bench.harness import Database, fresh_database, save_result, services
from bench.points import cluster_cpu_seconds
from campaign_service import topics
from campaign_service.adapters.rabbitmq import topology
from campaign_service.domain.events import tier_assigned


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu_seconds(bus: str = "kafka") -> float | None:
    """The broker's CPU so far, when scripts/services runs it here (CAMPAIGN_TEST_SERVICES_DIR)."""
    services_dir = os.environ.get("CAMPAIGN_TEST_SERVICES_DIR")
    pid_file = Path(services_dir or "/nonexistent", bus, f"{bus}.pid")
    try:
        return cpu_seconds(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError):
        return None


def topic_end(broker: str, topic: str) -> int:
    """The sum of the topic's high watermarks (messages ever written to it)."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"bench-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


async def queued(url: str, topic: str, queues: int, *, purge: bool = False, delete: bool = False) -> int:
    """The messages waiting in the topic's RabbitMQ queues (nothing consumes them here; 0 after
    `purge`). `delete`
    removes the queues afterwards: on a shared test broker, queues of another count than the
    tests' (--queues) would stay bound to the exchange and take a share of every key."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        await topology.declare(channel, topic, queues)
        total = 0
        for name in topology.queue_names(topic, queues):
            queue = await channel.declare_queue(name, passive=True)
            if purge:
                await queue.purge()
            else:
                total += queue.declaration_result.message_count or 0
            if delete:
                await queue.delete(if_unused=False, if_empty=False)
        return total
    finally:
        await connection.close()


async def broker_messages(env: dict[str, str], args: argparse.Namespace, *, before: bool) -> int:
    if args.bus == "rabbitmq":
        url, topic = env["CAMPAIGN_TEST_RABBITMQ_URL"], topics.VIP_TIER_ASSIGNED
        return await queued(url, topic, args.queues, purge=before, delete=not before)
    return await asyncio.to_thread(topic_end, env["KAFKA_BROKER"], topics.VIP_TIER_ASSIGNED)


def backlog(n: int, merchants: int) -> list[tuple[Any, ...]]:
    """n outbox rows as the progression path writes them: keys merchant:customer, about n /
    (2 * merchants) customers per merchant with two moves each (so keys repeat, order matters)."""
    ms = [uuid.uuid4() for _ in range(merchants)]
    customers = [(ms[i % merchants], uuid.uuid4()) for i in range(max(1, n // 2))]
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        merchant, customer = customers[i % len(customers)]
        m = tier_assigned(
            event_id=uuid.uuid4(),
            merchant_id=merchant,
            customer_id=customer,
            tier_id="gold" if i < len(customers) else "platinum",
            assigned_at=now,
            correlation_id=str(uuid.uuid4()),
            cause_event_id=uuid.uuid4(),
            previous_tier_id="silver",
            direction="up",
            reason="threshold_reached",
            program_version=1,
        )
        rows.append((m.event_id, m.merchant_id, m.topic, m.key, json.dumps(m.payload), json.dumps(m.headers)))
    return rows


def relay_env(db: Database, env: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    base = {k: v for k, v in env.items() if not k.startswith("CAMPAIGN_") and k not in ("REDIS_HOST", "AUTH_HOST")}
    return base | {
        "CAMPAIGN_DB_DSN": db.app_dsn,
        "CAMPAIGN_DB_OWNER_DSN": db.owner_dsn,
        "CAMPAIGN_RELAY_DB_DSN": db.relay_dsn,
        "KAFKA_BROKER": env["KAFKA_BROKER"],
        "CAMPAIGN_SCHEMA_REGISTRY_URL": env["CAMPAIGN_SCHEMA_REGISTRY_URL"],
        "CAMPAIGN_OUTBOX_BATCH_SIZE": str(args.batch),
        "CAMPAIGN_KAFKA_LINGER_MS": str(args.linger_ms),
        "CAMPAIGN_LOG_LEVEL": "info",
        **(
            {
                "CAMPAIGN_EVENT_BUS": "rabbitmq",
                "RABBITMQ_URL": env["CAMPAIGN_TEST_RABBITMQ_URL"],
                "CAMPAIGN_RABBITMQ_QUEUES_PER_TOPIC": str(args.queues),
            }
            if args.bus == "rabbitmq"
            else {}
        ),
        **dict(kv.split("=", 1) for kv in args.env),
    }


def start_relays(
    n: int, env: dict[str, str], cores: list[str], tmp: Path, profile: str = ""
) -> list[tuple[Any, Path]]:
    procs = []
    for i in range(n):
        log = tmp / f"relay-{i}.log"
        cmd = [sys.executable, "-m", "campaign_service", "relay"]
        if profile:  # cProfile of the whole run (written when the relay stops)
            cmd[1:1] = ["-m", "cProfile", "-o", f"{profile}.{i}"]
        if cores:
            cmd = ["taskset", "-c", cores[i % len(cores)], *cmd]
        with log.open("wb") as out:
            procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + 60
    for proc, log in procs:
        while "outbox relay started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"relay did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
    time.sleep(1.0)  # the start-up's own wake and stats pass
    return procs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = backlog(args.events, args.merchants)
    with services(f"postgres {args.bus} registry") as env, tempfile.TemporaryDirectory() as tmp_dir:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        procs = start_relays(
            args.relays, relay_env(db, env, args), [c for c in args.cores.split(",") if c], Path(tmp_dir), args.profile
        )
        su = await asyncpg.connect(db.superuser_dsn, database=db.name)
        try:
            broker_before = await broker_messages(env, args, before=True)
            tx = su.transaction()
            await tx.start()
            await su.copy_records_to_table(
                "outbox_events", records=rows, columns=["event_id", "merchant_id", "topic", "key", "payload", "headers"]
            )
            committed_at = await su.fetchval("SELECT clock_timestamp()")
            cpu0 = [cpu_seconds(p.pid) for p, _ in procs]
            pg0, broker0, t0 = cluster_cpu_seconds(), broker_cpu_seconds(args.bus), time.monotonic()
            await tx.commit()
            while await su.fetchval("SELECT EXISTS (SELECT 1 FROM outbox_events WHERE published_at IS NULL)"):
                if time.monotonic() - t0 > args.timeout:
                    break
                await asyncio.sleep(0.2)
            wall = time.monotonic() - t0
            cpu1 = [cpu_seconds(p.pid) for p, _ in procs]
            pg1, broker1 = cluster_cpu_seconds(), broker_cpu_seconds(args.bus)
            stats = await su.fetchrow(
                "SELECT count(*) FILTER (WHERE published_at IS NOT NULL) AS published,"
                " count(*) FILTER (WHERE attempts > 1) AS retried,"
                " extract(epoch FROM max(published_at) - $1) AS drain_s FROM outbox_events",
                committed_at,
            )
            broker_after = await broker_messages(env, args, before=False)
        finally:
            await su.close()
            for proc, _ in procs:
                proc.terminate()
            for proc, _ in procs:
                proc.wait(20)
    assert stats is not None
    n = int(stats["published"])
    drain_s = float(stats["drain_s"] or wall)
    relay_cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    return {
        "bus": args.bus,
        "events": args.events,
        "relays": args.relays,
        "batch": args.batch,
        "linger_ms": args.linger_ms,
        "published": n,
        "retried": int(stats["retried"]),
        "broker_messages": broker_after - broker_before,
        "drain_s": round(drain_s, 2),
        "events_per_s": round(n / drain_s),
        "relay_cpu_ms_per_event": round(relay_cpu / max(1, n) * 1000, 4),
        "relay_cpu_per_process_s": [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)],
        "pg_cpu_ms_per_event": round((pg1 - pg0) / max(1, n) * 1000, 4) if pg0 is not None and pg1 else None,
        "broker_cpu_ms_per_event": (
            round((broker1 - broker0) / max(1, n) * 1000, 4) if broker0 is not None and broker1 is not None else None
        ),
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--relays", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="CAMPAIGN_OUTBOX_BATCH_SIZE")
    parser.add_argument("--merchants", type=int, default=1000)
    parser.add_argument("--linger-ms", type=int, default=1, help="CAMPAIGN_KAFKA_LINGER_MS")
    parser.add_argument("--cores", default="", help="pin relay i to core cores[i %% len] (taskset)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--profile", default="", help="write each relay's cProfile to PATH.<i>")
    parser.add_argument("--bus", choices=["kafka", "rabbitmq"], default="kafka")
    parser.add_argument("--queues", type=int, default=4, help="CAMPAIGN_RABBITMQ_QUEUES_PER_TOPIC (--bus rabbitmq)")
    parser.add_argument("--env", action="append", default=[], help="extra NAME=value for the relays")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key:<26} {value}")
    save_result("relay" if args.bus == "kafka" else f"relay-{args.bus}", result)


if __name__ == "__main__":
    main()
