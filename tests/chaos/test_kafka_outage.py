"""Kafka down for a while: changes keep committing, their events wait in the outbox, /ready says
Kafka is degraded (not down), and every event arrives once Kafka is back."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from campaign_service import topics
from campaign_service.domain.tiers import TierSpec
from tests.conftest import OwnDatabase, events_env, start_service
from tests.kafka_support import kafka_sh

pytestmark = pytest.mark.kafka


def ready(http_port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_events_wait_in_the_outbox_while_kafka_is_down(
    own_db: OwnDatabase, read_topic: Any, tmp_path: Path
) -> None:
    service = start_service(own_db.db, tmp_path, events_env(CAMPAIGN_KAFKA_DELIVERY_TIMEOUT_MS="2000"))
    try:
        merchant = await own_db.merchant()
        reader = read_topic(topics.VIP_TIER_UPDATED)
        await asyncio.to_thread(kafka_sh, "kafka_kill")
        try:
            await own_db.tiers.create(merchant, "gold", TierSpec(name="Gold", min_points=100))
            for i in range(9):
                await own_db.tiers.update(merchant, "gold", TierSpec(name="Gold", min_points=101 + i), ["min_points"])
            await asyncio.sleep(5)  # the relay tries (2 s delivery timeout), fails and backs off
            rows = await own_db.outbox(merchant)
            assert len(rows) == 10
            assert all(r["published_at"] is None for r in rows)
            assert max(r["attempts"] for r in rows) >= 1
            status, body = await asyncio.to_thread(ready, service.http_port)
            assert status == 200, body
            assert body["status"] == "degraded"
            assert body["checks"]["kafka"] != "ok"
        finally:
            await asyncio.to_thread(kafka_sh, "kafka_start_again")

        expected = {str(r["event_id"]) for r in rows}
        await reader.wait_for(lambda got: expected <= {r.event_id for r in got}, within=90)
        for _ in range(100):
            if all(r["published_at"] is not None for r in await own_db.outbox(merchant)):
                break
            await asyncio.sleep(0.1)
        assert all(r["published_at"] is not None for r in await own_db.outbox(merchant))
    finally:
        assert service.stop() == 0, service.logs()[-3000:]
