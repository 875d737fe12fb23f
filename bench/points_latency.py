"""points.recorded -> vip_tier.assigned latency, stage by stage, at a fixed rate on the real broker.

Seeds a fresh database like bench.points (10,000 merchants, 1,000,000 customers, COPY), then runs
the service (consumers + relay in-process) and produces points.recorded at `--rate` for customers
new to the service (each one gets a first tier, so each one is announced). For every event it
takes the time of each stage from what the pipeline leaves behind, so the service runs as in
production (no extra instrumentation, no /metrics scraping):

  produce    the bench's produce() call (wall clock)
  appended   the broker's append time of the points.recorded message (the topic is made with
             message.timestamp.type=LogAppendTime; read from the delivery report)
  tx start   the points batch transaction's start: processed_events.created_at (now())
  outbox     the vip_tier.assigned outbox row's insert: outbox_events.created_at (clock_timestamp(),
             the batch's last statement before COMMIT)
  relayed    the relay's produce() of vip_tier.assigned: that message's CreateTime
  marked     the relay's mark of the row as published (after the broker's ack): published_at
  read back  the bench's consumer of vip_tier.assigned got it (wall clock)

and prints p50/p95/p99/max of each step and of the whole, with the service's CPU per event and the
load average. The database and broker timestamps have millisecond precision.

Variants (`--variant NAME[:KEY=VALUE,...]`, repeatable) run the same measurement against the same
database with other service settings, one after the other and then again
(`--rounds`, every other round in reverse order), so that their ratios come from one run on one
machine state; the ratios are printed per round and as the median over rounds. `--baseline-src DIR`
runs the variants named `base*` from another checkout's src/ (e.g. `git archive main src`), on
the same (current) schema: the before/after of a code change in the same run.

    .venv/bin/python -m bench.points_latency [--merchants 10000] [--customers 1000000] [--rate 500]
        [--events 5000] [--warmup 1000] [--settle-s 20] [--rounds 1] [--variant NAME[:K=V,...]]
        [--baseline-src DIR] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.events import AssignedWatcher, Bench, cpu_seconds, percentile
from bench.harness import drop_database, fresh_database, machine_shares, machine_ticks, save_result, services
from bench.points import PARTITIONS, cluster_cpu_seconds, encoded, seed
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.schema_registry import registry_client

STEPS = [
    ("produce->appended", "produce", "appended"),
    ("appended->tx start", "appended", "tx_start"),
    ("tx start->outbox", "tx_start", "outbox"),
    ("outbox->committed", "outbox", "committed"),
    ("committed->relayed", "committed", "relayed"),
    ("relayed->read back", "relayed", "read_back"),
    ("relayed->marked", "relayed", "marked"),
    ("TOTAL produce->read back", "produce", "read_back"),
    # The part the service owns: from the broker's append of points.recorded to the relay's
    # produce() of vip_tier.assigned (without the bench's producer and reader clients).
    ("SERVICE appended->relayed", "appended", "relayed"),
]


def produce_paced(producer: Producer, events: list[tuple[str, str, bytes]], rate: float) -> dict[str, list[float]]:
    """Produces at `rate`/s; per event id: [produce() wall time, broker append time]."""
    times: dict[str, list[float]] = {}

    def reporter(event_id: str) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                times[event_id].append(msg.timestamp()[1] / 1000)

        return on_delivery

    t0 = time.monotonic()
    for i, (event_id, key, value) in enumerate(events):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        times[event_id] = [time.time()]
        while True:
            try:
                producer.produce(topics.POINTS_RECORDED, value, key.encode(), on_delivery=reporter(event_id))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    return times


def recreate_topic(broker: str) -> None:
    """points.recorded anew, stamped by the broker (LogAppendTime): the append is a stage."""
    admin = AdminClient({"bootstrap.servers": broker})
    for f in admin.delete_topics([topics.POINTS_RECORDED], operation_timeout=30).values():
        with contextlib.suppress(KafkaException):  # it did not exist
            f.result()
    topic = NewTopic(topics.POINTS_RECORDED, PARTITIONS, 1, config={"message.timestamp.type": "LogAppendTime"})
    for _ in range(60):
        try:
            admin.create_topics([topic])[topics.POINTS_RECORDED].result()
            return
        except KafkaException:
            time.sleep(0.5)  # deletion still in progress
    raise RuntimeError("could not recreate the points.recorded topic")


async def db_stages(superuser_dsn: str, db_name: str, ids: list[str]) -> dict[str, dict[str, float]]:
    """tx start, outbox insert and published_at of each event (by cause), as epoch seconds."""
    conn = await asyncpg.connect(superuser_dsn, database=db_name)
    try:
        # The commit itself when the server tracks commit timestamps (track_commit_timestamp=on).
        tracked = await conn.fetchval("SELECT current_setting('track_commit_timestamp') = 'on'")
        commit = "extract(epoch FROM pg_xact_commit_timestamp(p.xmin))::float8" if tracked else "NULL::float8"
        rows = await conn.fetch(
            "SELECT p.event_id::text AS id, extract(epoch FROM p.created_at)::float8 AS tx_start,"
            " extract(epoch FROM o.created_at)::float8 AS outbox, extract(epoch FROM o.published_at)::float8 AS marked,"
            f" {commit} AS committed"
            " FROM processed_events p JOIN outbox_events o ON o.headers->>'cause_event_id' = p.event_id::text"
            " WHERE p.event_id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await conn.close()
    return {
        # Without commit timestamps, the outbox insert (the last statement before COMMIT) stands for it.
        r["id"]: {
            "tx_start": r["tx_start"],
            "outbox": r["outbox"],
            "committed": r["committed"] if r["committed"] is not None else r["outbox"],
            "marked": r["marked"],
        }
        for r in rows
    }


class StatementStats:
    """PostgreSQL time per statement over a window, when the server loads pg_stat_statements."""

    def __init__(self, superuser_dsn: str, db_name: str) -> None:
        self._dsn, self._db = superuser_dsn, db_name
        self.available = False

    async def reset(self) -> None:
        conn = await asyncpg.connect(self._dsn, database=self._db)
        try:
            loaded = await conn.fetchval(  # track=all shows the statements of triggers too
                "SELECT 'pg_stat_statements' = ANY(string_to_array(current_setting('shared_preload_libraries'), ','))"
            )
            if loaded:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await conn.execute("SELECT pg_stat_statements_reset()")
                self.available = True
        finally:
            await conn.close()

    async def top(self, n: int = 16) -> list[dict[str, Any]]:
        if not self.available:
            return []
        conn = await asyncpg.connect(self._dsn, database=self._db)
        try:
            rows = await conn.fetch(
                "SELECT calls, total_exec_time, mean_exec_time, total_plan_time, rows,"
                " left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1"
                " ORDER BY total_exec_time + total_plan_time DESC LIMIT $2",
                self._db,
                n,
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows]


STEP_METRICS = ("campaign_consumer_step_seconds", "campaign_relay_step_seconds")


def step_histograms(http_port: int) -> dict[str, dict[str, float]]:
    """The service's cycle-step histograms (bucket counts, sum, count by series), from one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(STEP_METRICS):
            continue
        name, value = line.rsplit(" ", 1)
        metric, _, labels = name.partition("{")
        fields = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",") if kv)
        le = fields.pop("le", None)
        series = "relay " if metric.startswith("campaign_relay") else f"{fields.get('topic', '').strip(chr(34))} "
        series += fields.get("step", "").strip('"')
        kind = metric.rsplit("_", 1)[1]  # bucket, sum, count
        key = f"le={le.strip(chr(34))}" if kind == "bucket" and le else kind
        out.setdefault(series, {})[key] = float(value)
    return out


def step_summary(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per series during the window: count, mean and p95 (the upper bound of its bucket), in ms."""
    out = {}
    for series, a in after.items():
        b = before.get(series, {})
        count = a.get("count", 0) - b.get("count", 0)
        if count <= 0 or not series.startswith(("points.recorded", "relay")):
            continue
        buckets = sorted(
            ((float(k[3:]), v - b.get(k, 0)) for k, v in a.items() if k.startswith("le=")), key=lambda x: x[0]
        )
        p95 = next((le for le, n in buckets if n >= 0.95 * count), float("inf"))
        out[series] = {
            "count": count,
            "mean_ms": (a.get("sum", 0) - b.get("sum", 0)) * 1000 / count,
            "p95_le_ms": p95 * 1000,
        }
    return out


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
    }


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    env = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    return name, env


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(13)
    variants = [parse_variant(v) for v in args.variant] or [("current", {})]
    with services("postgres redis kafka registry") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchants = [uuid.uuid4() for _ in range(args.merchants)]
        t0 = time.monotonic()
        await seed(db.superuser_dsn, db.name, merchants, args.customers)
        seeded_s = time.monotonic() - t0
        codec = AvroWireCodec(
            registry_client(env["CAMPAIGN_SCHEMA_REGISTRY_URL"]),
            produces={topics.POINTS_RECORDED: schema_text(topics.POINTS_RECORDED)},
        )
        # The Points service's producer: as in bench.points.
        producer = Producer(
            {"bootstrap.servers": env["KAFKA_BROKER"], "linger.ms": 5, "acks": "all", "enable.idempotence": True}
        )
        bench = Bench(env, db, "warning", Path(tempfile.mkdtemp(prefix="bench-points-latency.")))
        bench.skip_earlier_customer_events()
        recreate_topic(env["KAFKA_BROKER"])
        watcher = AssignedWatcher(env["KAFKA_BROKER"])
        statements = StatementStats(db.superuser_dsn, db.name)
        result: dict[str, Any] = {
            "merchants": args.merchants,
            "customers": args.customers,
            "seed_s": round(seeded_s, 1),
            "rate_per_s": args.rate,
            "events": args.events,
            "runs": [],
        }

        def fresh(n: int) -> list[tuple[Any, Any]]:
            return [(merchants[rng.randrange(len(merchants))], uuid.uuid4()) for _ in range(n)]

        try:
            if args.settle_s > 0:
                # Steady state first, measured by nobody: a service of the first variant at the rate
                # for a while, then VACUUM ANALYZE (the tables the pipeline writes were empty at the
                # seed's). Without it the first variant measured ran slower than the same one later.
                name, settings = variants[0]
                bench.extra_env = dict(settings)
                service = bench.start_service()
                try:
                    n = int(args.settle_s * args.rate)
                    settle = await encoded(codec, fresh(n), n, rng, in_order=True)
                    await asyncio.to_thread(produce_paced, producer, settle, args.rate)
                    watcher.wait_for([e[0] for e in settle], 120)
                finally:
                    service.stop()
                conn = await asyncpg.connect(db.superuser_dsn, database=db.name)
                try:
                    await conn.execute("VACUUM ANALYZE")
                finally:
                    await conn.close()
            for round_no in range(args.rounds):
                # A B, B A, A B, ...: a drift of the machine's load favours no variant.
                for name, settings in variants if round_no % 2 == 0 else variants[::-1]:
                    bench.extra_env = dict(settings)
                    if args.baseline_src and name.startswith("base"):
                        bench.extra_env["PYTHONPATH"] = str(Path(args.baseline_src).resolve())
                    service = bench.start_service()
                    try:
                        warm = await encoded(codec, fresh(args.warmup), args.warmup, rng, in_order=True)
                        await asyncio.to_thread(produce_paced, producer, warm, args.rate)
                        watcher.wait_for([e[0] for e in warm], 120)
                        events = await encoded(codec, fresh(args.events), args.events, rng, in_order=True)
                        await statements.reset()
                        hist0 = step_histograms(service.port)
                        cpu0, db_cpu0, load0 = cpu_seconds(service.proc.pid), cluster_cpu_seconds(), os.getloadavg()
                        machine0 = machine_ticks()
                        spy = None
                        if args.py_spy:  # a profile of the service during the measured window
                            out = bench.tmp / f"py-spy-{name}-{round_no}.txt"
                            spy = subprocess.Popen(
                                [args.py_spy, "record", "-p", str(service.proc.pid), "-d", str(int(args.events / args.rate)),
                                 "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            )  # fmt: skip
                        sent = await asyncio.to_thread(produce_paced, producer, events, args.rate)
                        complete = watcher.wait_for(list(sent), 120)
                        if spy is not None:
                            spy.wait(30)
                            print(f"py-spy profile: {out}")
                        cpu1, db_cpu1 = cpu_seconds(service.proc.pid), cluster_cpu_seconds()
                        machine = machine_shares(machine0, machine_ticks())
                        cycle = step_summary(hist0, step_histograms(service.port))
                        sql = await statements.top()
                    finally:
                        service.stop()
                    load1 = os.getloadavg()
                    stages = await db_stages(db.superuser_dsn, db.name, list(sent))
                    points: dict[str, dict[str, float]] = {}
                    for event_id, t in sent.items():
                        if event_id not in watcher.stamps or event_id not in stages or len(t) < 2:
                            continue
                        read_back, relayed = watcher.stamps[event_id]
                        points[event_id] = {
                            "produce": t[0], "appended": t[1], "read_back": read_back, "relayed": relayed,
                            **stages[event_id],
                        }  # fmt: skip
                    steps = {
                        label: summary(
                            [
                                (p[b] - p[a]) * 1000
                                for p in points.values()
                                if p.get(a) is not None and p.get(b) is not None
                            ]
                        )
                        for label, a, b in STEPS
                    }
                    run_result = {
                        "variant": name,
                        "round": round_no,
                        "settings": settings,
                        "received": len(points),
                        "complete": complete,
                        "steps": steps,
                        "cycle_steps": cycle,
                        "statements": sql,
                        "service_cpu_ms_per_event": (cpu1 - cpu0) * 1000 / len(sent),
                        "postgres_cpu_ms_per_event": (
                            (db_cpu1 - db_cpu0) * 1000 / len(sent)
                            if db_cpu0 is not None and db_cpu1 is not None
                            else None
                        ),
                        "load_average_before": load0,
                        "load_average_after": load1,
                        "machine_cpu_shares": machine,
                    }
                    result["runs"].append(run_result)
                    print_run(run_result, args.rate)
        finally:
            watcher.close()
            producer.flush(5)
            await codec.close()
        await drop_database(db)  # a million customers: left behind, autovacuum visits them in later runs
    return result


def print_run(r: dict[str, Any], rate: float) -> None:
    print(
        f"\n== {r['variant']} (round {r['round']}) {r['settings'] or ''}: {r['received']} events at {rate:.0f}/s,"
        f" service CPU {r['service_cpu_ms_per_event']:.3f} ms/event,"
        f" PostgreSQL {r['postgres_cpu_ms_per_event'] or 0:.3f} ms/event,"
        f" load {r['load_average_before'][0]:.1f} -> {r['load_average_after'][0]:.1f}"
    )
    m = r.get("machine_cpu_shares")
    if m:
        print(
            f"  machine over the window: busy {m['busy']:.0%}, iowait {m['iowait']:.0%}, steal {m['steal']:.0%}"
            " (steal: time the hypervisor gave this VM's cores to others)"
        )
    print(f"  {'step':26} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
    for label, s in r["steps"].items():
        print(f"  {label:26} {s['p50_ms']:8.1f} {s['p95_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}")
    if r["cycle_steps"]:
        print("  service cycle steps (its histograms):  count   mean ms   p95 <= ms")
        for series, c in sorted(r["cycle_steps"].items()):
            print(f"    {series:34} {c['count']:6.0f} {c['mean_ms']:9.2f} {c['p95_le_ms']:10.1f}")
    if r["statements"]:
        print("  PostgreSQL statements (pg_stat_statements):  calls  total ms  mean ms  plan ms   rows")
        for q in r["statements"]:
            print(
                f"    {q['calls']:7} {q['total_exec_time']:9.1f} {q['mean_exec_time']:8.2f} {q['total_plan_time']:8.1f}"
                f" {q['rows']:7}  {q['q']}"
            )


def print_ratios(result: dict[str, Any]) -> None:
    """Each variant's TOTAL p50/p99 against the first variant's: per round (the runs next to each
    other, the fairest pairs on a shared machine) and the median over rounds."""
    total = "TOTAL produce->read back"
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in result["runs"]:
        by_round.setdefault(r["round"], {})[r["variant"]] = r["steps"][total]
    names = list(dict.fromkeys(r["variant"] for r in result["runs"]))
    if len(names) < 2:
        return
    first = names[0]
    print(f"\nsame-run ratios against {first} (TOTAL produce->read back):")
    for name in names[1:]:
        ratios: dict[str, list[float]] = {"p50_ms": [], "p99_ms": []}
        for round_no, runs in sorted(by_round.items()):
            if name in runs and first in runs:
                for key in ratios:
                    ratios[key].append(runs[name][key] / runs[first][key])
                print(
                    f"  round {round_no}: {name} p50 {runs[name]['p50_ms']:.1f} / {first} {runs[first]['p50_ms']:.1f} ms"
                    f" = {ratios['p50_ms'][-1]:.2f}x, p99 {runs[name]['p99_ms']:.1f} / {runs[first]['p99_ms']:.1f} ms"
                    f" = {ratios['p99_ms'][-1]:.2f}x"
                )
        if ratios["p50_ms"]:
            print(
                f"  {name}: median over rounds p50 {statistics.median(ratios['p50_ms']):.2f}x,"
                f" p99 {statistics.median(ratios['p99_ms']):.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--settle-s", type=float, default=20.0, help="unmeasured run at the rate first, then VACUUM ANALYZE"
    )
    parser.add_argument("--variant", action="append", default=[], help="NAME[:CAMPAIGN_X=1,CAMPAIGN_Y=2]")
    parser.add_argument("--py-spy", help="path of py-spy: profile the service during each measured window")
    parser.add_argument("--baseline-src", help="src/ of another checkout, for the variants named base*")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_ratios(result)
    save_result("points_latency", result)


if __name__ == "__main__":
    main()
