"""The relay killed (SIGKILL) after Kafka acknowledged an event and before the outbox row was marked:
the row stays unpublished, the next relay publishes it again, and the copy carries the same event_id
that consumers deduplicate on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from campaign_service import topics
from campaign_service.domain.tiers import TierSpec
from tests.conftest import OwnDatabase, required_env, service_env

pytestmark = pytest.mark.kafka


def start_relay(own: OwnDatabase, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    env = service_env(
        own.db,
        tmp,
        {
            "KAFKA_BROKER": required_env("KAFKA_BROKER"),
            "CAMPAIGN_SCHEMA_REGISTRY_URL": required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"),
            "CAMPAIGN_OUTBOX_POLL_INTERVAL_S": "1",
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


async def test_relay_killed_between_publish_and_mark_publishes_again(
    own_db: OwnDatabase, read_topic: Any, tmp_path: Path
) -> None:
    merchant = await own_db.merchant()
    await own_db.tiers.create(merchant, "gold", TierSpec(name="Gold", min_points=100))
    [row] = await own_db.outbox(merchant)
    event_id = str(row["event_id"])
    reader = read_topic(topics.VIP_TIER_UPDATED)

    # SHARE mode lets the relay claim (FOR UPDATE) and publish, but blocks its UPDATE that marks.
    blocker = await asyncpg.connect(own_db.db.superuser_dsn, database=own_db.db.name)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("LOCK TABLE outbox_events IN SHARE MODE")
    first = start_relay(own_db, tmp_path, "relay-1")
    try:
        await reader.wait_for(lambda _: reader.matching(event_id=event_id), within=60)
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

    second = start_relay(own_db, tmp_path, "relay-2")
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
    assert copies[0].payload == copies[1].payload
    assert copies[0].key == copies[1].key
    assert copies[0].headers["event_id"] == copies[1].headers["event_id"] == event_id
    assert len({c.event_id for c in copies}) == 1, "a consumer deduplicating on event_id sees one event"
