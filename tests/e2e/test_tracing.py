"""One trace through a real service process: gRPC -> outbox -> Kafka, and Kafka -> consumer ->
outbox -> Kafka, exported over OTLP/gRPC to a receiver the test runs (tests/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from campaign_service import topics
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.tiers import TierSpec
from tests.conftest import OwnDatabase, ServiceProcess, events_env, free_port, start_service
from tests.kafka_support import CustomerEvents, Received
from tests.otlp_receiver import OtlpReceiver
from tests.tokens import auth_channel

pytestmark = pytest.mark.kafka

SERVER, PRODUCER, CONSUMER = (
    trace_pb2.Span.SPAN_KIND_SERVER,
    trace_pb2.Span.SPAN_KIND_PRODUCER,
    trace_pb2.Span.SPAN_KIND_CONSUMER,
)


def new_trace() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex[:16]


def parse_traceparent(header: str) -> tuple[str, str]:
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    return trace_id, span_id


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def traced_service(own_db: OwnDatabase, tmp_path: Path, otlp: OtlpReceiver) -> Iterator[ServiceProcess]:
    """A service with Kafka and tracing on, on a database of its own: no other consumer in the
    session assigns its customers (without a trace) before it does."""
    env: dict[str, str | None] = {
        **events_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    }
    service = start_service(own_db.db, tmp_path, extra_env=env)
    yield service
    service.stop()


async def test_one_trace_goes_from_the_rpc_and_from_a_consumed_event_across_kafka(
    traced_service: ServiceProcess,
    own_db: OwnDatabase,
    otlp: OtlpReceiver,
    read_topic: Any,
    customer_events: CustomerEvents,
) -> None:
    merchant = await own_db.merchant()
    await own_db.tiers.create(merchant, "basic", TierSpec(name="Basic", min_points=0, is_default=True))
    updated, assigned = read_topic(topics.VIP_TIER_UPDATED), read_topic(topics.VIP_TIER_ASSIGNED)

    # gRPC -> outbox -> Kafka, continuing the caller's trace.
    rpc_trace, caller_span = new_trace()
    cid = f"trace-{uuid.uuid4().hex[:12]}"
    async with auth_channel(traced_service.target) as channel:
        await campaign_grpc.CampaignServiceStub(channel).UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="basic",
                tier=pb.VIPTier(min_points=5),
                update_mask=field_mask_pb2.FieldMask(paths=["min_points"]),
            ),
            metadata=(("traceparent", f"00-{rpc_trace}-{caller_span}-01"), ("x-correlation-id", cid)),
        )

    def the_update(received: list[Received]) -> list[Received]:
        return [
            r
            for r in received
            if r.payload
            and str(r.payload["merchant_id"]) == str(merchant)
            and r.payload["updated_fields"] == ["min_points"]
        ]

    [update] = the_update(await updated.wait_for(lambda received: bool(the_update(received))))
    assert parse_traceparent(update.headers["traceparent"])[0] == rpc_trace
    rpc = await otlp.wait_for(lambda s: s.trace_id == rpc_trace and s.kind == SERVER)
    publish = await otlp.wait_for(lambda s: s.span_id == parse_traceparent(update.headers["traceparent"])[1])
    assert (rpc.name, rpc.parent_span_id, rpc.service) == (
        "campaign.v1.CampaignService/UpdateVIPTier",
        caller_span,
        "campaign-service",
    )
    assert (publish.name, publish.kind, publish.trace_id, publish.parent_span_id) == (
        "publish vip_tier.updated",
        PRODUCER,
        rpc_trace,
        rpc.span_id,
    )
    stored = await own_db.su.fetchval(
        "SELECT traceparent FROM outbox_events WHERE event_id = $1", uuid.UUID(update.event_id or "")
    )
    assert parse_traceparent(stored) == (rpc_trace, rpc.span_id), "the outbox row holds the RPC's span"
    # The RPC's log lines carry the span the receiver got.
    logged = [json.loads(line) for line in traced_service.logs().splitlines() if cid in line]
    assert {(x["trace_id"], x["span_id"]) for x in logged} == {(rpc_trace, rpc.span_id)}, logged

    # Kafka -> consumer -> outbox -> Kafka, continuing the producer's trace.
    event_trace, producer_span = new_trace()
    event_id = await customer_events.created(merchant, traceparent=f"00-{event_trace}-{producer_span}-01")

    def the_assignment(received: list[Received]) -> list[Received]:
        return [r for r in received if r.payload and str(r.payload["cause_event_id"]) == str(event_id)]

    [assignment] = the_assignment(await assigned.wait_for(lambda received: bool(the_assignment(received))))
    header_trace, header_span = parse_traceparent(assignment.headers["traceparent"])
    assert header_trace == event_trace
    consumed = await otlp.wait_for(lambda s: s.trace_id == event_trace and s.kind == CONSUMER)
    republish = await otlp.wait_for(lambda s: s.span_id == header_span)
    assert (consumed.name, consumed.parent_span_id, consumed.attributes["messaging.message.id"]) == (
        "process customer.created",
        producer_span,
        str(event_id),
    )
    batch = await otlp.wait_for(lambda s: s.span_id in consumed.links)
    assert batch.name == "process customer.created batch"
    assert (republish.name, republish.kind, republish.trace_id, republish.parent_span_id) == (
        "publish vip_tier.assigned",
        PRODUCER,
        event_trace,
        consumed.span_id,
    )


async def test_without_an_otlp_endpoint_nothing_carries_a_trace(
    event_service: ServiceProcess, new_merchant: Any, read_topic: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    updated = read_topic(topics.VIP_TIER_UPDATED)
    rpc_trace, caller_span = new_trace()
    async with auth_channel(event_service.target) as channel:
        await campaign_grpc.CampaignServiceStub(channel).CreateVIPTier(
            pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=pb.VIPTier(tier_id="t", name="T")),
            metadata=(("traceparent", f"00-{rpc_trace}-{caller_span}-01"),),
        )
    [created] = [
        r
        for r in await updated.wait_for(
            lambda rs: any(str((r.payload or {})["merchant_id"]) == str(merchant) for r in rs)
        )
        if r.payload and str(r.payload["merchant_id"]) == str(merchant)
    ]
    assert "traceparent" not in created.headers
    assert (
        await superuser_conn.fetchval("SELECT traceparent FROM outbox_events WHERE merchant_id = $1", merchant) is None
    )
    await asyncio.sleep(0)
    assert rpc_trace not in event_service.logs()


async def test_an_unreachable_collector_fails_no_rpc_and_does_not_hold_up_the_stop(
    database: Any, tmp_path: Path, new_merchant: Any
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    service = start_service(database, tmp_path, extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": nobody})
    try:
        async with auth_channel(service.target) as channel:
            created = await campaign_grpc.CampaignServiceStub(channel).CreateVIPTier(
                pb.CreateVIPTierRequest(merchant_id=str(await new_merchant()), tier=pb.VIPTier(tier_id="g", name="G"))
            )
        assert created.tier_id == "g"
        await asyncio.sleep(6)  # the batch processor's first export (5 s) fails and retries
    finally:
        started = time.monotonic()
        code = service.stop()
    took = time.monotonic() - started
    assert (code, took < 15) == (0, True), (took, service.logs()[-2000:])
    lines = [line for line in service.logs().splitlines() if line.strip()]
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert any("exporting traces" in json.loads(line)["message"] for line in lines), "the export was tried"
