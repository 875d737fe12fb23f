"""The fault matrix: while a bounded stream of customer.created events and a steady GetVIPTier load
run, PostgreSQL, Redis, Kafka and the service itself are SIGKILLed and started again, in turn,
twice each. Afterwards the ledger must balance:

  * every customer of the stream has exactly one customer_tiers row (the default tier, caused by
    its event) and one history row, and every event one processed_events row;
  * vip_tier.assigned carries, after dedupe by event_id, exactly one event per customer.created
    (copies with the same event_id are allowed - at-least-once - and counted; none may be missing);
  * no event of the stream was dead-lettered, every outbox row was published;
  * no lookup returned a tier other than the one asked for, nor a name the tier did not have
    while the lookup ran: `gold` tiers are renamed (UpdateVIPTier) all along, so a stale cache
    entry shows; at the end every tier answers with the name the database holds.

The error budget of each fault is printed: failed lookups, the longest failure window, how long
after the restart lookups still failed, and how long until every event sent so far was assigned.

CAMPAIGN_CHAOS_EVENTS sets the stream's size (default 2,000, so the suite stays within minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.backoff import sleep_unless
from tests.chaos.lookups import Call, LookupLoad, TierFacts, failure_windows, get_tier, lookup_channel
from tests.chaos.merchants import merchants_with_tiers
from tests.conftest import (
    Database,
    ServiceProcess,
    events_env,
    make_database,
    required_env,
    start_service,
    wait_ready,
)
from tests.dependencies import dependency_sh
from tests.kafka_support import CustomerEvents, Received, TopicReader, drop_records
from tests.service_http import metric

EVENTS = int(os.environ.get("CAMPAIGN_CHAOS_EVENTS", "2000"))
MERCHANTS = 10
ROUNDS = 2
LEAD_S = 1.0  # events and lookups flow normally this long before each kill
DOWN_S = 3.0  # how long the killed part stays down
LOOKUP_RATE = 100.0
LOOKUP_DEADLINE_S = 1.0
RENAME_EVERY_S = 0.5
# After a restart, until every event sent so far is assigned. The longest case is the service's
# own restart: its consumer rejoins the group only when the killed member's Kafka session (45 s,
# librdkafka's default) has expired.
CATCH_UP_S = 120.0
# Lookups answer again this soon after the restarted part is back (the service: once ready).
LOOKUPS_BACK_S = 5.0

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.restarts_dependencies,
    pytest.mark.timeout(420 + EVENTS // 20),
]


class RestartableService:
    """The service process, SIGKILLed and started again on the same database, ports and consumer group."""

    def __init__(self, db: Database, tmp: Path, env: dict[str, str]) -> None:
        self._db, self._tmp, self._env = db, tmp, env
        self.current = start_service(db, tmp, env)
        self.incarnations = [self.current]
        # Cache invalidations the instance still held (not delivered to Redis) when it was killed:
        # its successor must not serve what they would have removed.
        self.pending_at_kills: list[float] = []

    @property
    def target(self) -> str:
        return self.current.target

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.pending_at_kills.append(metric(self.current, "vip_tier_cache_pending_invalidations"))
        self.current.proc.kill()
        self.current.proc.wait(10)

    def start_again(self) -> None:
        ports = {"CAMPAIGN_GRPC_PORT": str(self.current.grpc_port), "CAMPAIGN_HTTP_PORT": str(self.current.http_port)}
        started = start_service(self._db, self._tmp, {**self._env, **ports}, wait=False)
        self.current = ServiceProcess(started.proc, self.current.grpc_port, self.current.http_port, started.log_path)
        self.incarnations.append(self.current)
        wait_ready(self.current)

    def logs(self) -> str:
        return "\n".join(s.logs()[-3000:] for s in self.incarnations)


@dataclass
class Stream:
    """The customer.created events sent, and the vip_tier.assigned ones seen (by cause)."""

    producer: CustomerEvents
    merchants: list[uuid.UUID]
    assigned: TopicReader
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # event_id -> (merchant, customer)
    causes: set[str] = field(default_factory=set)
    _seen: int = 0

    async def emit(self, count: int, seconds: float) -> None:
        """Sends `count` events evenly over `seconds` (the producer buffers while Kafka is down)."""
        start = time.monotonic()
        for i in range(count):
            merchant, customer = random.choice(self.merchants), uuid.uuid4()
            event_id = await self.producer.created(merchant, customer, wait=False)
            self.sent[str(event_id)] = (str(merchant), str(customer))
            if (ahead := start + seconds * (i + 1) / count - time.monotonic()) > 0:
                await asyncio.sleep(ahead)

    def _update(self) -> None:
        new = self.assigned.received[self._seen :]
        self._seen += len(new)
        self.causes.update(str(r.payload["cause_event_id"]) for r in new if r.payload is not None)

    async def caught_up(self, within: float) -> float:
        """Waits until every event sent so far was assigned on the topic; returns when (monotonic)."""
        deadline = time.monotonic() + within
        while True:
            self._update()
            missing = self.sent.keys() - self.causes
            if not missing:
                return time.monotonic()
            assert time.monotonic() < deadline, f"{len(missing)} of {len(self.sent)} events not assigned in {within}s"
            await asyncio.sleep(0.1)


async def follow(readers: list[TopicReader], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for reader in readers:
            await reader.poll()


@dataclass
class Rename:
    name: str
    issued: float  # time.monotonic() before the request
    acked: float | None = None  # when it answered OK; None: failed (and may have committed anyway)


class TierNames:
    """Every name each tier was given, to judge a lookup's answer against the time it ran."""

    def __init__(self, tiers: list[TierFacts]) -> None:
        self._renames = {(t.merchant_id, t.tier_id): [Rename(t.name, -1.0, -1.0)] for t in tiers}

    def issue(self, tier: TierFacts, name: str) -> Rename:
        rename = Rename(name, time.monotonic())
        self._renames[(tier.merchant_id, tier.tier_id)].append(rename)
        return rename

    def allows(self, call: Call) -> bool:
        """The answer is the tier asked for, under the name it had when the lookup started (the
        last acknowledged rename) or one it was given while the lookup ran."""
        if not call.ok:
            return True
        if call.got is None or replace(call.got, name=call.asked.name) != call.asked:
            return False
        renames = self._renames[(call.asked.merchant_id, call.asked.tier_id)]
        floor = max(i for i, r in enumerate(renames) if r.acked is not None and r.acked <= call.started)
        return call.got.name in {r.name for r in renames[floor:] if r.issued < call.ended}

    def explain(self, call: Call, t0: float) -> str:
        """A wrong lookup with the renames of its tier around it, times in seconds since `t0`."""
        renames = self._renames[(call.asked.merchant_id, call.asked.tier_id)]

        def at(t: float | None) -> str:
            return "failed" if t is None else f"{t - t0:.3f}"

        near = [
            f"{r.name!r} issued {at(r.issued)} acked {at(r.acked)}"
            for r in renames[1:]
            if call.started - 10 <= r.issued <= call.ended + 2
        ]
        got = call.got.name if call.got else None
        return f"lookup {at(call.started)}..{at(call.ended)} got {got!r}; renames: {'; '.join(near)}"


async def rename_tiers(target: str, tiers: list[TierFacts], names: TierNames, stop: asyncio.Event) -> int:
    """Renames a random tier every RENAME_EVERY_S until stopped; returns how many renames answered OK."""
    done = 0
    async with lookup_channel(target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        for n in itertools.count(1):
            if stop.is_set():
                return done
            tier = random.choice(tiers)
            rename = names.issue(tier, f"{tier.name} v{n}")
            with contextlib.suppress(grpc.aio.AioRpcError):  # down: the lookups judge what came of it
                await stub.UpdateVIPTier(
                    pb.UpdateVIPTierRequest(
                        merchant_id=tier.merchant_id,
                        tier_id=tier.tier_id,
                        tier=pb.VIPTier(name=rename.name),
                        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                    ),
                    timeout=2 * LOOKUP_DEADLINE_S,
                )
                rename.acked = time.monotonic()
                done += 1
            await sleep_unless(stop, RENAME_EVERY_S)
    return done


async def names_match_the_database(db: Database, target: str, tiers: list[TierFacts]) -> list[str]:
    """Tiers whose GetVIPTier name differs from the database's (a cache entry that outlived a rename)."""
    su = await asyncpg.connect(db.superuser_dsn, database=db.name)
    try:
        rows = await su.fetch(
            "SELECT merchant_id::text, tier_id, name FROM vip_tiers WHERE merchant_id = ANY($1::uuid[])",
            sorted({t.merchant_id for t in tiers}),
        )
    finally:
        await su.close()
    stored = {(r["merchant_id"], r["tier_id"]): r["name"] for r in rows}
    stale = []
    async with lookup_channel(target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        for t in tiers:
            call = await get_tier(stub, t, 5.0)
            assert call.got is not None, call
            if call.got.name != (name := stored[(t.merchant_id, t.tier_id)]):
                stale.append(f"{t.merchant_id}/{t.tier_id}: {call.got.name!r}, stored {name!r}")
    return stale


@dataclass
class Phase:
    fault: str
    round: int
    killed_at: float
    restarted_at: float = 0.0
    caught_up_at: float = 0.0
    calls: list[Call] = field(default_factory=list)

    @property
    def failed(self) -> list[Call]:
        return [c for c in self.calls if not c.ok]

    @property
    def window_s(self) -> float:
        """The longest span in which every lookup failed."""
        return max((w.seconds for w in failure_windows(self.calls)), default=0.0)

    @property
    def lookups_s(self) -> float:
        """How long after the restart lookups still failed."""
        return max(0.0, max((c.ended for c in self.failed), default=0.0) - self.restarted_at)

    def row(self) -> str:
        return (
            f"{self.fault:<9} {self.round:>5} {len(self.calls):>8} {len(self.failed):>7} {self.window_s:>9.2f}"
            f" {self.restarted_at - self.killed_at - DOWN_S:>10.2f} {self.lookups_s:>10.2f}"
            f" {self.caught_up_at - self.restarted_at:>12.2f}"
        )


HEADER = (
    "fault     round  lookups  failed  window_s  restart_s  lookups_s  caught_up_s\n"
    "  (window_s: longest span of only failed lookups; restart_s: the start command after the"
    f" {DOWN_S:.0f} s down;\n   lookups_s / caught_up_s: after the restart, until lookups stopped failing /"
    " every event sent so far was assigned)"
)


def faults(service: RestartableService) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    return {
        "postgres": (lambda: dependency_sh("postgres", "pg_kill"), lambda: dependency_sh("postgres", "pg_start_again")),
        "redis": (lambda: dependency_sh("redis", "redis_kill"), lambda: dependency_sh("redis", "redis_start_again")),
        "kafka": (lambda: dependency_sh("kafka", "kafka_kill"), lambda: dependency_sh("kafka", "kafka_start_again")),
        "service": (service.kill, service.start_again),
    }


@dataclass
class Ledger:
    events: int
    on_topic: int
    distinct: int
    duplicates: int


async def check_ledger(db: Database, stream: Stream, dlq: TopicReader) -> Ledger:
    mine = {str(m) for m in stream.merchants}
    su = await asyncpg.connect(db.superuser_dsn, database=db.name)
    try:
        merchants = list(stream.merchants)
        rows = await su.fetch(
            "SELECT merchant_id, customer_id, tier_id, cause_event_id FROM customer_tiers WHERE merchant_id = ANY($1)",
            merchants,
        )
        history = await su.fetchval("SELECT count(*) FROM customer_tier_history WHERE merchant_id = ANY($1)", merchants)
        processed = await su.fetchval("SELECT count(*) FROM processed_events WHERE merchant_id = ANY($1)", merchants)
        outbox = await su.fetch(
            "SELECT event_id, published_at FROM outbox_events WHERE topic = $1 AND merchant_id = ANY($2)",
            topics.VIP_TIER_ASSIGNED,
            merchants,
        )
    finally:
        await su.close()

    assigned = {str(r["cause_event_id"]): (str(r["merchant_id"]), str(r["customer_id"]), r["tier_id"]) for r in rows}
    missing = stream.sent.keys() - assigned.keys()
    assert not missing, (
        f"{len(missing)} of {len(stream.sent)} customers without a tier; of those on the topic anyway:"
        f" {len(missing & stream.causes)}; events: {sorted(missing)[:5]}"
    )
    assert len(rows) == len(stream.sent), f"{len(rows)} assignments for {len(stream.sent)} customers"
    assert assigned == {e: (m, c, "basic") for e, (m, c) in stream.sent.items()}, "wrong or missing assignments"
    assert history == len(stream.sent), "a customer was assigned more than once"
    assert processed == len(stream.sent)
    assert all(r["published_at"] is not None for r in outbox), "outbox rows left unpublished"

    on_topic = [r for r in stream.assigned.received if r.payload and str(r.payload["merchant_id"]) in mine]
    by_event: dict[str, list[Received]] = {}
    for r in on_topic:
        by_event.setdefault(str(r.payload["event_id"] if r.payload else None), []).append(r)
    assert by_event.keys() == {str(r["event_id"]) for r in outbox}, "topic and outbox disagree"
    causes = [str(copies[0].payload["cause_event_id"]) for copies in by_event.values() if copies[0].payload]
    assert sorted(causes) == sorted(stream.sent), "not exactly one vip_tier.assigned per customer.created"
    for copies in by_event.values():
        assert all(c.payload == copies[0].payload and c.key == copies[0].key for c in copies), "copies differ"
    dead = [r for r in dlq.received if r.payload and str(r.payload.get("merchant_id")) in mine]
    assert not dead, f"{len(dead)} events of the stream were dead-lettered: {dead[:3]}"
    return Ledger(len(stream.sent), len(on_topic), len(by_event), len(on_topic) - len(by_event))


async def durable_commits(db: Database) -> None:
    """The test cluster runs with synchronous_commit=off for speed: a SIGKILLed server then loses
    transactions it had reported committed (and the relay may already have published their
    events). Production runs with it on; so does this test's database."""
    su = await asyncpg.connect(db.superuser_dsn, database=db.name)
    try:
        await su.execute(f'ALTER DATABASE "{db.name}" SET synchronous_commit = on')
    finally:
        await su.close()


async def test_kill_and_restart_each_dependency_twice_under_load(
    avro_codec: AvroWireCodec, core_codec: AvroWireCodec, tmp_path: Path
) -> None:
    db = await make_database()
    await durable_commits(db)
    expected = await merchants_with_tiers(db, MERCHANTS)
    merchants = sorted({uuid.UUID(t.merchant_id) for t in expected})
    env = events_env(
        CAMPAIGN_DB_STATEMENT_TIMEOUT_MS="2000",
        CAMPAIGN_DB_CONNECT_TIMEOUT_S="1",
        CAMPAIGN_KAFKA_DELIVERY_TIMEOUT_MS="5000",
        CAMPAIGN_LOG_LEVEL="info",
    )
    service = await asyncio.to_thread(RestartableService, db, tmp_path, env)
    broker = required_env("KAFKA_BROKER")
    assigned = TopicReader(broker, topics.VIP_TIER_ASSIGNED, avro_codec)
    dlq = TopicReader(broker, topics.CUSTOMER_CREATED_DLQ, avro_codec)
    producer = CustomerEvents(broker, core_codec)
    stream = Stream(producer, merchants, assigned)
    load = LookupLoad(service.target, expected, rate=LOOKUP_RATE, deadline_s=LOOKUP_DEADLINE_S)
    names = TierNames(expected)
    stop_following = asyncio.Event()
    follower = asyncio.create_task(follow([assigned, dlq], stop_following))
    stop_renaming = asyncio.Event()
    renamer = asyncio.create_task(
        rename_tiers(service.target, [t for t in expected if t.tier_id == "gold"], names, stop_renaming)
    )
    phases: list[Phase] = []
    down: Callable[[], None] | None = None  # what to start again if the test ends while it is down
    schedule = [(r, f) for r in range(1, ROUNDS + 1) for f in faults(service)]
    try:
        load.start()
        started = time.monotonic()
        for i, (round_, fault) in enumerate(schedule):
            kill, start_again = faults(service)[fault]
            share = EVENTS * (i + 1) // len(schedule) - EVENTS * i // len(schedule)
            emitter = asyncio.create_task(stream.emit(share, LEAD_S + DOWN_S + 1.0))
            await asyncio.sleep(LEAD_S)
            phase = Phase(fault, round_, time.monotonic())
            down = start_again
            await asyncio.to_thread(kill)
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(start_again)
            down = None
            phase.restarted_at = time.monotonic()
            await emitter
            await producer.flush(60)
            phase.caught_up_at = await stream.caught_up(CATCH_UP_S)
            phases.append(phase)
        await stream.caught_up(CATCH_UP_S)
        await asyncio.sleep(3.0)  # late copies of published events still count as duplicates
        stop_renaming.set()
        renamed = await renamer
        calls = await load.stop()
        total_s = time.monotonic() - started
        stale = await names_match_the_database(db, service.target, expected)
    finally:
        if down is not None:  # the other tests share the dependencies
            await asyncio.to_thread(down)
        stop_following.set()
        stop_renaming.set()
        await asyncio.gather(renamer, return_exceptions=True)
        await load.stop()
        await follower
        producer.close()
        code = await asyncio.to_thread(service.current.stop)
        await asyncio.to_thread(drop_records, broker, topics.CUSTOMER_CREATED)
    assert code == 0, service.logs()

    for phase, end in zip(phases, [p.killed_at for p in phases[1:]] + [time.monotonic()], strict=True):
        phase.calls = [c for c in calls if phase.killed_at <= c.started < end - LEAD_S]
    wrong = [c for c in calls if not names.allows(c)]
    failed = [c for c in calls if not c.ok]
    print(
        f"\nfault matrix: {len(stream.sent)} customer.created in {total_s:.0f} s; {renamed} renames;"
        f" lookups {len(calls)}: {len(calls) - len(failed)} ok, {len(failed)} failed, {len(wrong)} wrong;"
        f" failures by code {dict(Counter(c.code.name for c in failed))}\n"
        + HEADER
        + "\n"
        + "\n".join(p.row() for p in phases)
    )
    print(f"pending cache invalidations when the service was killed: {service.pending_at_kills}")
    ledger = await check_ledger(db, stream, dlq)
    assigned.close()
    dlq.close()
    print(
        f"vip_tier.assigned on the topic: {ledger.on_topic} messages, {ledger.distinct} distinct event_ids,"
        f" {ledger.duplicates} duplicates"
    )
    assert not stale, f"lookups disagree with the database after the run: {stale}"
    # A lookup fails only as retryable: never INTERNAL or anything else that blames the caller.
    assert {c.code for c in failed} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    for phase in phases:
        assert phase.lookups_s <= LOOKUPS_BACK_S, f"lookups still failed after the restart: {phase.row()}"
        if phase.fault in ("redis", "kafka"):  # neither is needed to answer a lookup
            assert phase.window_s <= 2 * LOOKUP_DEADLINE_S, f"lookups failed for a while: {phase.row()}"
    # A wrong or stale answer, with the phase it fell in and its tier's renames around it.
    where = Counter(
        next((f"{p.fault}#{p.round}" for p in reversed(phases) if p.killed_at <= c.started), "before faults")
        for c in wrong
    )
    phases_at = "; ".join(
        f"{p.fault}#{p.round} killed {p.killed_at - started:.3f} restarted {p.restarted_at - started:.3f}"
        for p in phases
    )
    detail = "\n".join(names.explain(c, started) for c in wrong[:10])
    assert not wrong, f"{len(wrong)} wrong or stale lookups, by phase {dict(where)}:\n{detail}\n{phases_at}"
