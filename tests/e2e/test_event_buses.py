"""The event contract on BOTH buses, from one suite: each test runs on Kafka and on RabbitMQ
(CAMPAIGN_EVENT_BUS), against a service process (or a relay process) on the real broker, the
real schema registry and PostgreSQL. What it proves holds whichever adapter is behind the ports:
one assignment per customer.created, duplicates have one effect, poison is dead-lettered and the
next message is handled, a relay SIGKILLed between publish and mark publishes again with the same
event_id, and a broker killed and restarted loses nothing. The other two consumers too:
points.recorded moves a customer up and a repeated event counts once, its poison is
dead-lettered and the next event of its key handled; customer.deleted erases and announces, and
an unknown merchant's is dead-lettered.

Each bus has a database of its own (tests/module_database.py) and its service's consumer groups
start at the topics' ends: the main session's other service processes relay, consume and run jobs
on the shared database, and on Kafka their consumer groups also read (and dead-letter) what these
tests produce, so what the service on test did is read from its own /metrics, not counted on the
dead-letter topic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.domain.tiers import TierSpec
from tests.bus_support import Bus
from tests.conftest import (
    Database,
    OwnDatabase,
    ServiceProcess,
    events_env,
    make_database,
    required_env,
    service_env,
    start_service,
)
from tests.kafka_support import Received
from tests.module_database import (  # noqa: F401  (fixtures: this module's own database)
    module_app_pool,
    module_owner_conn,
    module_relay_pool,
    module_superuser_conn,
    module_tier_service,
)
from tests.service_http import metric

BUSES = [
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq, id="rabbitmq"),
]


@pytest.fixture(scope="module", params=BUSES)
async def bus(
    request: pytest.FixtureRequest, avro_codec: AvroWireCodec, core_codec: AvroWireCodec
) -> AsyncIterator[Bus]:
    made = Bus(request.param, required_env, avro_codec, core_codec)
    yield made
    await made.close()


@pytest.fixture(scope="module")
async def database(bus: Bus) -> Database:
    """A database for each bus (what one bus's run leaves in the outbox is not the other's)."""
    del bus
    return await make_database()


@pytest.fixture(autouse=True)
async def _readers_closed(bus: Bus) -> AsyncIterator[None]:
    yield
    await bus.close_readers()


def bus_env(bus: Bus, **overrides: str) -> dict[str, str | None]:
    """A service process's environment on `bus` (events_env names Kafka; RabbitMQ drops it)."""
    env: dict[str, str | None] = {**events_env(**overrides), **bus.service_env()}
    if bus.name != "kafka":
        env["KAFKA_BROKER"] = None
    return env


@pytest.fixture(scope="module")
async def bus_service(
    bus: Bus, database: Database, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    """The service on `bus`: relay and consumers in the process (one per bus: on RabbitMQ a
    second service would be a standby consumer of the same single-active-consumer queues). Its
    consumers start at the topics' ends (see Bus.start_at_end)."""
    group = f"campaign-test-{uuid.uuid4().hex[:10]}"
    # The service's consumer groups per topic (wiring/events.py names them after its group).
    await bus.start_at_end(
        {
            topics.CUSTOMER_CREATED: group,
            topics.POINTS_RECORDED: f"{group}.points",
            topics.CUSTOMER_DELETED: f"{group}.erasure",
        }
    )
    svc = start_service(
        database,
        tmp_path_factory.mktemp(f"bus-{bus.name}"),
        extra_env=bus_env(bus, CAMPAIGN_KAFKA_DELIVERY_TIMEOUT_MS="3000", CAMPAIGN_KAFKA_CONSUMER_GROUP=group),
    )
    yield svc
    assert svc.stop() == 0, svc.logs()[-3000:]


def dead_lettered(service: ServiceProcess, reason: str, topic: str = topics.CUSTOMER_CREATED) -> float:
    """What this service process has dead-lettered (its own count: on Kafka other processes'
    consumer groups dead-letter the same messages onto the same topic)."""
    return metric(service, "campaign_events_dead_lettered_total", event_type=topic, reason=reason)


async def until(condition: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"not within {within}s"
        await asyncio.sleep(0.1)


def caused_by(event_id: uuid.UUID) -> Any:
    return lambda received: any(
        r.payload is not None and str(r.payload.get("cause_event_id")) == str(event_id) for r in received
    )


async def test_one_vip_tier_assigned_per_customer_created(
    bus: Bus, bus_service: ServiceProcess, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    customer = uuid.uuid4()
    event_id = await bus.created(merchant, customer, correlation_id=f"corr-{bus.name}")

    await assigned.wait_for(caused_by(event_id), within=60)
    await assigned.settle(2.0)

    [msg] = assigned.matching(cause_event_id=event_id)
    assert msg.value is not None
    assert msg.value[0] == 0, "Confluent wire format: magic byte 0"
    assert msg.key == f"{merchant}:{customer}", "the Kafka key is the RabbitMQ routing key"
    assert msg.payload is not None
    assert msg.payload["tier_id"] == "basic"
    assert msg.headers["event_id"] == str(msg.payload["event_id"])
    assert msg.headers["event_type"] == topics.VIP_TIER_ASSIGNED
    assert msg.headers["cause_event_id"] == str(event_id)
    assert msg.headers["correlation_id"] == f"corr-{bus.name}" == msg.payload["correlation_id"]
    rows = await superuser_conn.fetchval(
        "SELECT count(*) FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
    )
    assert rows == 1


async def test_the_same_event_three_times_has_one_effect(
    bus: Bus, bus_service: ServiceProcess, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    customer, event_id, key = uuid.uuid4(), uuid.uuid4(), f"dup-{uuid.uuid4()}"
    for _ in range(3):
        await bus.created(merchant, customer, event_id=event_id, key=key)
    # One key: one partition / one queue, handled in order; the sentinel out means all were handled.
    sentinel = await bus.created(merchant, key=key)
    await assigned.wait_for(caused_by(sentinel), within=60)
    await assigned.settle(1.0)

    assert len(assigned.matching(cause_event_id=event_id)) == 1
    history = await superuser_conn.fetchval(
        "SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
    )
    processed = await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id)
    assert (history, processed) == (1, 1)


async def test_poison_is_dead_lettered_with_its_reason_and_the_next_message_is_handled(
    bus: Bus, bus_service: ServiceProcess, merchant_with_default: Any
) -> None:
    merchant = await merchant_with_default()
    dlq = await bus.reader(topics.CUSTOMER_CREATED_DLQ)
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    before = dead_lettered(bus_service, "undecodable")
    key = f"poison-{uuid.uuid4()}"
    await bus.raw(b"\x00\x00\x00\x00\x07 not avro", key=key, headers={"correlation_id": "corr-poison"})
    after = await bus.created(merchant, key=key)  # same key: behind the poison in its partition / queue

    def poison(received: list[Received]) -> list[Received]:
        # On Kafka other processes' consumer groups dead-letter it too (and `after`, whose
        # merchant their databases do not know): the letters of the poison are the undecodable ones.
        return [r for r in received if r.key == key and r.payload is None]

    await dlq.wait_for(lambda got: bool(poison(got)), within=60)
    await assigned.wait_for(caused_by(after), within=60)
    for letter in poison(dlq.received):
        assert letter.value == b"\x00\x00\x00\x00\x07 not avro", "the dead letter carries the original bytes"
        assert letter.headers["dlq_reason"] == "undecodable"
        assert letter.headers["dlq_detail"]
        assert letter.headers["dlq_source"].startswith(topics.CUSTOMER_CREATED)
        assert letter.headers["correlation_id"] == "corr-poison", "the original headers are kept"
    await until(lambda: dead_lettered(bus_service, "undecodable") > before, within=10)
    await dlq.settle(1.0)
    assert dead_lettered(bus_service, "undecodable") - before == 1, "the service dead-lettered it once"


async def test_unknown_merchant_is_dead_lettered_as_such(bus: Bus, bus_service: ServiceProcess) -> None:
    dlq = await bus.reader(topics.CUSTOMER_CREATED_DLQ)
    before = dead_lettered(bus_service, "unknown_merchant")
    stranger = uuid.uuid4()
    await bus.created(stranger)
    await dlq.wait_for(lambda _: bool(dlq.matching(merchant_id=stranger)), within=60)
    assert {letter.headers["dlq_reason"] for letter in dlq.matching(merchant_id=stranger)} == {"unknown_merchant"}
    await until(lambda: dead_lettered(bus_service, "unknown_merchant") > before, within=10)
    await dlq.settle(1.0)
    assert dead_lettered(bus_service, "unknown_merchant") - before == 1, "the service dead-lettered it once"


def start_relay(bus: Bus, own: OwnDatabase, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    env = service_env(
        own.db,
        tmp,
        {
            **bus_env(bus),
            # The relay must still be waiting for its UPDATE when it is killed, not time out first.
            "CAMPAIGN_DB_STATEMENT_TIMEOUT_MS": "60000",
        },
    )
    with (tmp / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "campaign_service", "relay"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def relay_waiting_to_mark(su: asyncpg.Connection[Any], database: str) -> bool:
    return bool(
        await su.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
            " AND query LIKE 'UPDATE outbox_events SET published_at%'",
            database,
        )
    )


async def test_relay_killed_between_publish_and_mark_publishes_again_with_the_same_event_id(
    bus: Bus, own_db: OwnDatabase, tmp_path: Path
) -> None:
    merchant = await own_db.merchant()
    await own_db.tiers.create(merchant, "gold", TierSpec(name="Gold", min_points=100))
    [row] = await own_db.outbox(merchant)
    event_id = str(row["event_id"])
    reader = await bus.reader(topics.VIP_TIER_UPDATED)

    # SHARE mode lets the relay claim (FOR UPDATE) and publish, but blocks its UPDATE that marks.
    blocker = await asyncpg.connect(own_db.db.superuser_dsn, database=own_db.db.name)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("LOCK TABLE outbox_events IN SHARE MODE")
    first = start_relay(bus, own_db, tmp_path, "relay-1")
    try:
        await reader.wait_for(lambda _: bool(reader.matching(event_id=event_id)), within=60)
        for _ in range(100):
            if await relay_waiting_to_mark(own_db.su, own_db.db.name):
                break
            await asyncio.sleep(0.1)
        assert await relay_waiting_to_mark(own_db.su, own_db.db.name), "relay is not blocked before marking"
        first.kill()
        assert first.wait(10) == -9
    finally:
        first.kill()
        await lock.rollback()
        await blocker.close()
    [row] = await own_db.outbox(merchant)
    assert row["published_at"] is None, "the killed relay's mark must not have committed"

    second = start_relay(bus, own_db, tmp_path, "relay-2")
    try:
        await reader.wait_for(lambda _: len(reader.matching(event_id=event_id)) >= 2, within=60)
        for _ in range(100):
            [row] = await own_db.outbox(merchant)
            if row["published_at"] is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        second.terminate()
        assert second.wait(20) == 0, "relay stops cleanly on SIGTERM"
    assert row["published_at"] is not None
    await reader.settle(1.0)
    copies = reader.matching(event_id=event_id)
    assert len(copies) == 2, "at least once: published again, and only once more"
    assert copies[0].value == copies[1].value, "the same bytes"
    assert copies[0].key == copies[1].key
    assert copies[0].headers["event_id"] == copies[1].headers["event_id"] == event_id
    assert len({c.event_id for c in copies}) == 1, "a consumer deduplicating on event_id sees one event"


@pytest.mark.timeout(420)
async def test_broker_killed_and_restarted_loses_nothing(
    bus: Bus, bus_service: ServiceProcess, merchant_with_default: Any, superuser_conn: Any, tier_service: Any
) -> None:
    """Events the broker confirmed before it was SIGKILLed are consumed after it is back, and
    events written while it was down wait in the outbox and are published then."""
    merchant = await merchant_with_default()
    # The default tier's event may go out before the readers exist: only later events are awaited.
    before = {
        r["event_id"]
        for r in await superuser_conn.fetch("SELECT event_id FROM outbox_events WHERE merchant_id = $1", merchant)
    }
    updated = await bus.reader(topics.VIP_TIER_UPDATED)
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    customers = [uuid.uuid4() for _ in range(20)]
    created = [await bus.created(merchant, c, key=str(c)) for c in customers]
    await asyncio.to_thread(bus.kill)
    try:
        await tier_service.create(merchant, "gold", TierSpec(name="Gold", min_points=100))
        for i in range(4):
            await tier_service.update(merchant, "gold", TierSpec(name="Gold", min_points=101 + i), ["min_points"])
        await asyncio.sleep(4)  # the relay tries (3 s confirm/delivery timeout), fails, backs off
        pending = await superuser_conn.fetchval(
            "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND published_at IS NULL", merchant
        )
        assert pending >= 5, "events of changes made while the broker is down wait in the outbox"
    finally:
        await asyncio.to_thread(bus.start_again)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = await superuser_conn.fetchval(
            "SELECT count(*) FROM customer_tiers WHERE merchant_id = $1 AND customer_id = ANY($2::uuid[])",
            merchant,
            customers,
        )
        unpublished = await superuser_conn.fetchval(
            "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND published_at IS NULL", merchant
        )
        if done == len(customers) and unpublished == 0:
            break
        await asyncio.sleep(0.5)
    assert (done, unpublished) == (len(customers), 0), bus_service.logs()[-3000:]
    outbox = await superuser_conn.fetch(
        "SELECT event_id, topic FROM outbox_events WHERE merchant_id = $1 ORDER BY seq", merchant
    )
    want_updated = {
        str(r["event_id"]) for r in outbox if r["topic"] == topics.VIP_TIER_UPDATED and r["event_id"] not in before
    }
    assert len(want_updated) == 5
    await updated.wait_for(lambda got: want_updated <= {r.event_id for r in got}, within=90)
    await assigned.wait_for(
        lambda got: {str(e) for e in created} <= {str(r.payload.get("cause_event_id")) for r in got if r.payload},
        within=90,
    )


# --- points.recorded and customer.deleted: the other two consumers, on both buses ------------


async def ladder_merchant(tier_service: Any, new_merchant: Any) -> uuid.UUID:
    """basic (0, default) < silver (1000) < gold (5000)."""
    merchant: uuid.UUID = await new_merchant()
    await tier_service.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
    await tier_service.create(merchant, "silver", TierSpec(name="Silver", min_points=1000))
    await tier_service.create(merchant, "gold", TierSpec(name="Gold", min_points=5000))
    return merchant


def earned(merchant: uuid.UUID, customer: uuid.UUID, qualifying: int, event_id: uuid.UUID | None = None) -> Any:
    """A points.recorded earn entry as the Points service sends it."""
    return {
        "event_id": str(event_id or uuid.uuid4()),
        "merchant_id": str(merchant),
        "customer_id": str(customer),
        "entry_id": str(uuid.uuid4()),
        "type": "earn",
        "points": qualifying,
        "qualifying_points": qualifying,
        "reverses_entry_id": None,
        "occurred_at": int(time.time() * 1000),
        "correlation_id": None,
    }


async def test_points_recorded_moves_the_customer_up_and_a_repeated_event_counts_once(
    bus: Bus, bus_service: ServiceProcess, tier_service: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(tier_service, new_merchant), uuid.uuid4()
    key = f"{merchant}:{customer}"
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    first = await bus.event(topics.POINTS_RECORDED, earned(merchant, customer, 1200), key=key)
    await assigned.wait_for(caused_by(first), within=60)
    [msg] = assigned.matching(cause_event_id=first)
    assert msg.payload is not None
    assert msg.key == key
    assert msg.payload["tier_id"] == "silver"

    # The same event twice more, then another of the same key (behind them in its partition / queue).
    for _ in range(2):
        await bus.event(topics.POINTS_RECORDED, earned(merchant, customer, 1200, event_id=first), key=key)
    then = await bus.event(topics.POINTS_RECORDED, earned(merchant, customer, 3900), key=key)
    await assigned.wait_for(caused_by(then), within=60)
    await assigned.settle(1.0)
    [msg] = assigned.matching(cause_event_id=then)
    assert msg.payload is not None
    assert msg.payload["tier_id"] == "gold", "1200 + 3900 = 5100 >= 5000 (the repeats did not count)"
    assert len(assigned.matching(cause_event_id=first)) == 1
    points = await superuser_conn.fetchval(
        "SELECT sum(points) FROM qualifying_points_daily WHERE merchant_id = $1 AND customer_id = $2",
        merchant,
        customer,
    )
    assert points == 1200 + 3900


async def test_points_recorded_poison_is_dead_lettered_and_the_next_event_of_its_key_is_handled(
    bus: Bus, bus_service: ServiceProcess, tier_service: Any, new_merchant: Any
) -> None:
    merchant, customer = await ladder_merchant(tier_service, new_merchant), uuid.uuid4()
    key = f"{merchant}:{customer}"
    dlq = await bus.reader(topics.POINTS_RECORDED_DLQ)
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    before = dead_lettered(bus_service, "undecodable", topics.POINTS_RECORDED)
    await bus.raw(b"\x00\x00\x00\x00\x07 not avro", key=key, topic=topics.POINTS_RECORDED)
    after = await bus.event(topics.POINTS_RECORDED, earned(merchant, customer, 1000), key=key)

    def poison(received: list[Received]) -> list[Received]:
        return [r for r in received if r.key == key and r.payload is None]

    await dlq.wait_for(lambda got: bool(poison(got)), within=60)
    await assigned.wait_for(caused_by(after), within=60)
    for letter in poison(dlq.received):
        assert letter.value == b"\x00\x00\x00\x00\x07 not avro"
        assert letter.headers["dlq_reason"] == "undecodable"
        assert letter.headers["dlq_source"].startswith(topics.POINTS_RECORDED)
    await until(lambda: dead_lettered(bus_service, "undecodable", topics.POINTS_RECORDED) > before, within=10)
    await dlq.settle(1.0)
    assert dead_lettered(bus_service, "undecodable", topics.POINTS_RECORDED) - before == 1


def deleted(merchant: uuid.UUID, customer: uuid.UUID) -> Any:
    """A customer.deleted as the Core Service sends it."""
    return {
        "event_id": str(uuid.uuid4()),
        "merchant_id": str(merchant),
        "customer_id": str(customer),
        "deleted_at": int(time.time() * 1000),
    }


async def test_customer_deleted_erases_the_customer_and_announces_it(
    bus: Bus, bus_service: ServiceProcess, merchant_with_default: Any, superuser_conn: Any
) -> None:
    merchant, customer = await merchant_with_default(), uuid.uuid4()
    key = f"{merchant}:{customer}"
    assigned = await bus.reader(topics.VIP_TIER_ASSIGNED)
    erased = await bus.reader(topics.VIP_TIER_CUSTOMER_ERASED)
    created = await bus.created(merchant, customer, key=key)
    await assigned.wait_for(caused_by(created), within=60)

    event_id = await bus.event(topics.CUSTOMER_DELETED, deleted(merchant, customer), key=key)
    await erased.wait_for(caused_by(event_id), within=60)
    await erased.settle(1.0)
    [msg] = erased.matching(cause_event_id=event_id)
    assert msg.key == key
    for table in ("customer_tiers", "customer_tier_history"):
        n = await superuser_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
        )
        assert n == 0, table


async def test_customer_deleted_of_an_unknown_merchant_is_dead_lettered_as_such(
    bus: Bus, bus_service: ServiceProcess
) -> None:
    dlq = await bus.reader(topics.CUSTOMER_DELETED_DLQ)
    before = dead_lettered(bus_service, "unknown_merchant", topics.CUSTOMER_DELETED)
    stranger, customer = uuid.uuid4(), uuid.uuid4()
    await bus.event(topics.CUSTOMER_DELETED, deleted(stranger, customer), key=f"{stranger}:{customer}")
    await dlq.wait_for(lambda _: bool(dlq.matching(merchant_id=stranger)), within=60)
    assert {letter.headers["dlq_reason"] for letter in dlq.matching(merchant_id=stranger)} == {"unknown_merchant"}
    await until(lambda: dead_lettered(bus_service, "unknown_merchant", topics.CUSTOMER_DELETED) > before, within=10)
    await dlq.settle(1.0)
    assert dead_lettered(bus_service, "unknown_merchant", topics.CUSTOMER_DELETED) - before == 1
