"""The outbox relay in-process on the real database, Kafka and registry (a database of its own per test,
so no other relay competes for its rows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import KafkaError

from campaign_service import metrics, topics
from campaign_service.adapters.kafka.producer import KafkaProducer, producer_config
from campaign_service.adapters.kafka.publisher import KafkaEventPublisher
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.postgres.outbox import PgOutbox, PgOutboxListener
from campaign_service.domain.tiers import TierSpec
from campaign_service.events.relay import OutboxRelay, RelaySettings
from tests.conftest import OwnDatabase, free_port, required_env, service_env

pytestmark = pytest.mark.kafka


async def merchant_with_changes(own: OwnDatabase, updates: int = 0) -> uuid.UUID:
    """A merchant whose tier `gold` was created and then updated `updates` times (1 + updates events)."""
    merchant = await own.merchant()
    await own.tiers.create(merchant, "gold", TierSpec(name="Gold", min_points=100))
    for i in range(updates):
        await own.tiers.update(merchant, "gold", TierSpec(name="Gold", min_points=101 + i), ["min_points"])
    return merchant


def publisher(avro_codec: AvroWireCodec, broker: str, delivery_timeout_ms: int = 10_000) -> KafkaEventPublisher:
    producer = KafkaProducer(
        producer_config(broker, client_id="relay-test", delivery_timeout_ms=delivery_timeout_ms, linger_ms=1)
    )
    return KafkaEventPublisher(producer, avro_codec, delivery_timeout_s=delivery_timeout_ms / 1000)


async def test_relay_publishes_in_order_with_key_and_headers_then_marks(
    own_db: OwnDatabase, avro_codec: AvroWireCodec, read_topic: Any
) -> None:
    merchant = await merchant_with_changes(own_db, updates=3)
    reader = read_topic(topics.VIP_TIER_UPDATED)
    pub = publisher(avro_codec, required_env("KAFKA_BROKER"))
    relay = OutboxRelay(PgOutbox(own_db.relay_pool), pub)
    try:
        result = await relay.publish_batch()
        assert (result.claimed, result.published, result.error) == (4, 4, None)
        assert (await relay.publish_batch()).claimed == 0
    finally:
        await pub.close()
    rows = await own_db.outbox(merchant)
    assert all(r["published_at"] is not None and r["attempts"] == 1 for r in rows)
    received = await reader.wait_for(lambda got: len(reader.matching(merchant_id=merchant)) >= 4)
    mine = [r for r in received if r.payload and str(r.payload["merchant_id"]) == str(merchant)]
    assert [r.event_id for r in mine] == [str(r["event_id"]) for r in rows], "one partition, outbox order"
    assert {r.key for r in mine} == {f"{merchant}:gold"}
    assert all(r.headers["event_id"] == r.event_id and r.headers["correlation_id"] for r in mine)


async def test_failed_publication_leaves_rows_pending_with_the_error(
    own_db: OwnDatabase, avro_codec: AvroWireCodec
) -> None:
    merchant = await merchant_with_changes(own_db)
    pub = publisher(avro_codec, f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    try:
        result = await OutboxRelay(PgOutbox(own_db.relay_pool), pub).publish_batch()
    finally:
        await pub.close()
    assert (result.claimed, result.published) == (1, 0)
    [row] = await own_db.outbox(merchant)
    assert row["published_at"] is None
    assert row["attempts"] == 1
    assert "timed out" in row["last_error"].lower()


async def test_a_claim_continues_each_key_from_its_oldest_unpublished_row(own_db: OwnDatabase) -> None:
    merchant = await merchant_with_changes(own_db, updates=3)  # 4 events of one key
    store = PgOutbox(own_db.relay_pool)
    async with store.claim(2) as first, store.claim(10) as second:
        a = [m.event_id for m in first.messages]
        b = [m.event_id for m in second.messages]
        await first.mark_published(a)
    # another claim (another replica) gets nothing of the key while the first holds its shard ...
    assert (len(a), b) == (2, [])
    # ... and once it is released, claims again from the oldest unpublished row, in outbox order
    async with store.claim(10) as third:
        c = [m.event_id for m in third.messages]
    ordered = [r["event_id"] for r in await own_db.outbox(merchant)]
    assert (a, c) == (ordered[:2], ordered[2:])


async def test_purge_removes_only_published_rows_past_retention(own_db: OwnDatabase) -> None:
    merchant = await merchant_with_changes(own_db, updates=2)
    old, recent, pending = (r["event_id"] for r in await own_db.outbox(merchant))
    await own_db.su.execute(
        "UPDATE outbox_events SET published_at = now() - interval '4 days' WHERE event_id = $1", old
    )
    await own_db.su.execute(
        "UPDATE outbox_events SET published_at = now() - interval '1 hour' WHERE event_id = $1", recent
    )
    assert await PgOutbox(own_db.relay_pool).purge(older_than_s=3 * 24 * 3600) == 1
    assert [r["event_id"] for r in await own_db.outbox(merchant)] == [recent, pending]


async def test_processed_events_past_retention_are_purged_oldest_first_in_batches(own_db: OwnDatabase) -> None:
    merchant = await merchant_with_changes(own_db)
    ages_days = [40, 39, 38, 35, 31, 29, 1]  # retention 30 days: five go, two stay
    rows = [(uuid.uuid4(), merchant, age) for age in ages_days]
    await own_db.su.executemany(
        "INSERT INTO processed_events (event_id, merchant_id, event_type, created_at)"
        " VALUES ($1, $2, 'customer.created', now() - make_interval(days => $3))",
        rows,
    )
    outbox = PgOutbox(own_db.relay_pool)

    async def left() -> set[uuid.UUID]:
        found = await own_db.su.fetch("SELECT event_id FROM processed_events WHERE merchant_id = $1", merchant)
        return {r["event_id"] for r in found}

    # Bounded: two batches of two at most per purge, the oldest first.
    assert await outbox.purge_processed(older_than_s=30 * 24 * 3600, batch=2, max_batches=2) == 4
    assert await left() == {event_id for event_id, _, _ in rows[4:]}
    assert await outbox.purge_processed(older_than_s=30 * 24 * 3600, batch=2, max_batches=2) == 1
    assert await left() == {event_id for event_id, _, _ in rows[5:]}


async def test_the_service_role_alone_cannot_delete_processed_events(own_db: OwnDatabase) -> None:
    merchant = await merchant_with_changes(own_db)
    event_id = uuid.uuid4()
    await own_db.su.execute(
        "INSERT INTO processed_events (event_id, merchant_id, event_type, created_at)"
        " VALUES ($1, $2, 'customer.created', now() - interval '400 days')",
        event_id,
        merchant,
    )
    async with own_db.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # no grant, or no policy lets a row go
            await conn.execute("DELETE FROM processed_events")
    assert await own_db.su.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 1


async def test_notify_wakes_the_relay_without_waiting_for_the_poll(
    own_db: OwnDatabase, avro_codec: AvroWireCodec
) -> None:
    pub = publisher(avro_codec, required_env("KAFKA_BROKER"))
    relay = OutboxRelay(PgOutbox(own_db.relay_pool), pub, RelaySettings(poll_interval_s=300))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(PgOutboxListener(own_db.db.relay_dsn).run(relay.wake, stop)),
        asyncio.create_task(relay.run(stop)),
    ]
    try:
        await asyncio.sleep(1.0)  # the relay found nothing and now sleeps for up to 300 s
        merchant = await merchant_with_changes(own_db)
        for _ in range(100):
            if all(r["published_at"] for r in await own_db.outbox(merchant)):
                break
            await asyncio.sleep(0.1)
        assert all(r["published_at"] for r in await own_db.outbox(merchant)), "not published within 10 s"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await pub.close()


async def test_cli_lists_the_outbox(own_db: OwnDatabase, avro_codec: AvroWireCodec, tmp_path: Path) -> None:
    merchant = await merchant_with_changes(own_db)
    env = service_env(own_db.db, tmp_path)  # no KAFKA_BROKER: events stay in the outbox

    def listing(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "campaign_service", "outbox", "list", *args],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [r for r in rows if "payload" in r]  # not log lines

    [pending] = listing("--pending")
    assert (pending["topic"], pending["key"], pending["published_at"]) == ("vip_tier.updated", f"{merchant}:gold", None)
    assert pending["payload"]["tier_id"] == "gold"
    pub = publisher(avro_codec, required_env("KAFKA_BROKER"))
    try:
        await OutboxRelay(PgOutbox(own_db.relay_pool), pub).publish_batch()
    finally:
        await pub.close()
    assert listing("--pending") == []
    [published] = listing("--limit", "5")
    assert published["event_id"] == pending["event_id"]
    assert published["published_at"] is not None


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        ("relay", {}, "KAFKA_BROKER"),
        ("relay", {"KAFKA_BROKER": "127.0.0.1:9"}, "CAMPAIGN_SCHEMA_REGISTRY_URL"),
        ("serve", {"KAFKA_BROKER": "127.0.0.1:9"}, "CAMPAIGN_SCHEMA_REGISTRY_URL"),
    ],
)
def test_incomplete_event_configuration_is_one_clear_line(
    database: Any, tmp_path: Path, command: str, env: dict[str, str], variable: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "campaign_service", command],
        env=service_env(database, tmp_path, env),
        capture_output=True,
        timeout=60,
    )
    [line] = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2
    assert line.startswith("configuration error:")
    assert variable in line


async def test_producer_is_rebuilt_after_a_fatal_error_and_keeps_delivering(
    own_db: OwnDatabase, avro_codec: AvroWireCodec
) -> None:
    await merchant_with_changes(own_db)
    producer = KafkaProducer(
        producer_config(required_env("KAFKA_BROKER"), client_id="relay-test", delivery_timeout_ms=10_000, linger_ms=1)
    )
    relay = OutboxRelay(PgOutbox(own_db.relay_pool), KafkaEventPublisher(producer, avro_codec, delivery_timeout_s=10))
    before = metrics.PRODUCER_REBUILDS._value.get()
    try:
        # What librdkafka's error callback receives when the idempotent producer cannot go on.
        producer._on_error(KafkaError(KafkaError._FATAL, "simulated fatal error", fatal=True))
        result = await relay.publish_batch()
    finally:
        await producer.close()
    assert (result.claimed, result.published) == (1, 1)
    assert metrics.PRODUCER_REBUILDS._value.get() == before + 1
