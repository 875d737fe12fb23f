"""Events end to end through a service process on the real Kafka and schema registry:
customer.created in, vip_tier.assigned / vip_tier.updated out, dead letters, dedupe, metrics."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from google.protobuf import field_mask_pb2

from campaign_service import topics
from campaign_service.adapters.kafka.wire import schema_text, subject
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import events_env, required_env, start_service
from tests.kafka_support import CustomerEvents, Received, core_service_codec
from tests.tokens import auth_channel

pytestmark = pytest.mark.kafka


def caused_by(event_id: uuid.UUID) -> Any:
    return lambda received: any(
        r.payload is not None and str(r.payload.get("cause_event_id")) == str(event_id) for r in received
    )


def scrape(http_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def with_key(key: str) -> Any:
    return lambda received: any(r.key == key for r in received)


async def test_customer_created_gives_exactly_one_vip_tier_assigned(
    event_service: Any, merchant_with_default: Any, customer_events: Any, read_topic: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    customer = uuid.uuid4()
    event_id = await customer_events.created(merchant, customer, correlation_id="corr-e2e-1")

    await assigned.wait_for(caused_by(event_id))
    await assigned.settle(2.0)

    [msg] = assigned.matching(cause_event_id=event_id)
    assert msg.value is not None
    assert msg.value[0] == 0, "Confluent wire format: magic byte 0"
    assert msg.key == f"{merchant}:{customer}"
    assert msg.payload is not None
    assert (str(msg.payload["merchant_id"]), str(msg.payload["customer_id"]), msg.payload["tier_id"]) == (
        str(merchant),
        str(customer),
        "basic",
    )
    assert msg.headers["correlation_id"] == "corr-e2e-1" == msg.payload["correlation_id"]
    assert msg.headers["cause_event_id"] == str(event_id)
    assert msg.headers["event_id"] == str(msg.payload["event_id"])
    row = await superuser_conn.fetchrow(
        "SELECT tier_id, source, cause_event_id, assigned_at FROM customer_tiers"
        " WHERE merchant_id = $1 AND customer_id = $2",
        merchant,
        customer,
    )
    assert (row["tier_id"], row["source"], row["cause_event_id"]) == ("basic", "customer.created", event_id)
    assert row["assigned_at"] == msg.payload["assigned_at"]


async def test_same_event_three_times_gives_one_assignment_and_one_event(
    event_service: Any, merchant_with_default: Any, customer_events: Any, read_topic: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_default()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    customer, event_id, key = uuid.uuid4(), uuid.uuid4(), f"dup-{uuid.uuid4()}"
    for _ in range(3):
        await customer_events.created(merchant, customer, event_id=event_id, key=key)
    # Same key, same partition, handled in order: once the sentinel is out, the duplicates were handled.
    sentinel = await customer_events.created(merchant, key=key)
    await assigned.wait_for(caused_by(sentinel))
    await assigned.settle(1.0)

    assert len(assigned.matching(cause_event_id=event_id)) == 1
    history = await superuser_conn.fetchval(
        "SELECT count(*) FROM customer_tier_history WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
    )
    processed = await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id)
    assert (history, processed) == (1, 1)


async def test_tier_update_announces_vip_tier_updated_with_the_changed_fields(
    event_service: Any, new_merchant: Any, read_topic: Any
) -> None:
    merchant = await new_merchant()
    updated = read_topic(topics.VIP_TIER_UPDATED)
    async with auth_channel(event_service.target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        await stub.CreateVIPTier(
            pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=pb.VIPTier(tier_id="gold", name="Gold"))
        )
        await stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=pb.VIPTier(discount_percentage=15, free_shipping=True, name="ignored, not in the mask"),
                update_mask=field_mask_pb2.FieldMask(paths=["discount_percentage", "free_shipping"]),
            ),
            metadata=(("x-correlation-id", "corr-update-1"),),
        )

    def both(received: list[Received]) -> bool:
        return len([r for r in received if r.payload and str(r.payload["merchant_id"]) == str(merchant)]) >= 2

    await updated.wait_for(both)
    create, update = updated.matching(merchant_id=merchant)
    assert create.payload is not None
    assert update.payload is not None
    assert "name" in create.payload["updated_fields"]
    assert update.payload["updated_fields"] == ["discount_percentage", "free_shipping"]
    assert update.key == f"{merchant}:gold"
    assert update.headers["correlation_id"] == "corr-update-1"


async def test_poison_message_is_dead_lettered_and_the_partition_moves_on(
    event_service: Any, merchant_with_default: Any, customer_events: Any, read_topic: Any
) -> None:
    merchant = await merchant_with_default()
    dlq = read_topic(topics.CUSTOMER_CREATED_DLQ)
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    key = f"poison-{uuid.uuid4()}"
    await customer_events.raw(b"\x00\x00\x00\x00not avro at all", key=key)
    await customer_events.raw(b'{"json": "is not the wire format"}', key=key)
    good = await customer_events.created(merchant, key=key)

    await assigned.wait_for(caused_by(good))
    dead = await dlq.wait_for(lambda received: len([r for r in received if r.key == key]) >= 2)
    reasons = [r.headers["dlq_reason"] for r in dead if r.key == key]
    assert reasons == ["undecodable", "undecodable"]
    first = next(r for r in dead if r.key == key)
    assert first.value == b"\x00\x00\x00\x00not avro at all", "the original bytes are kept"
    assert first.headers["dlq_source"].startswith("customer.created/")
    assert first.headers["dlq_detail"]


async def test_unknown_merchant_is_dead_lettered(
    event_service: Any, customer_events: Any, read_topic: Any, superuser_conn: Any
) -> None:
    dlq = read_topic(topics.CUSTOMER_CREATED_DLQ)
    stranger, key = uuid.uuid4(), f"stranger-{uuid.uuid4()}"
    event_id = await customer_events.created(stranger, key=key)

    [dead] = [r for r in await dlq.wait_for(with_key(key)) if r.key == key]
    assert dead.headers["dlq_reason"] == "unknown_merchant"
    assert dead.event_id == str(event_id), "the dead letter is the original, decodable event"
    assert await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 0


async def test_merchant_without_default_tier_is_a_recorded_no_op(
    event_service: Any,
    new_merchant: Any,
    merchant_with_default: Any,
    customer_events: Any,
    read_topic: Any,
    superuser_conn: Any,
) -> None:
    plain, other = await new_merchant(), await merchant_with_default()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    dlq = read_topic(topics.CUSTOMER_CREATED_DLQ)
    key = f"nodefault-{uuid.uuid4()}"
    event_id = await customer_events.created(plain, key=key)
    sentinel = await customer_events.created(other, key=key)
    await assigned.wait_for(caused_by(sentinel))
    await dlq.settle(0.5)

    assert assigned.matching(cause_event_id=event_id) == []
    assert [r for r in dlq.received if r.key == key] == []
    assert await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 1
    assert await superuser_conn.fetchval("SELECT count(*) FROM customer_tiers WHERE merchant_id = $1", plain) == 0


async def test_metrics_count_assignments_dead_letters_and_the_outbox(
    event_service: Any, merchant_with_default: Any, customer_events: Any, read_topic: Any
) -> None:
    merchant = await merchant_with_default()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    await customer_events.raw(b"garbage", key=f"metrics-{uuid.uuid4()}")
    await assigned.wait_for(caused_by(await customer_events.created(merchant)))

    text = await asyncio.to_thread(scrape, event_service.http_port)
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert values["vip_tier_assignment_events_total"] >= 1
    assert values['vip_tier_assignment_failures_total{event_type="customer.created",reason="dead_letter"}'] >= 1
    assert values['campaign_events_dead_lettered_total{event_type="customer.created",reason="undecodable"}'] >= 1
    assert values['campaign_outbox_published_total{topic="vip_tier.assigned"}'] >= 1
    assert "campaign_outbox_backlog" in values
    assert "campaign_outbox_oldest_age_seconds" in values
    assert any(k.startswith("campaign_kafka_consumer_lag{") for k in values)


async def subject_versions(name: str) -> list[tuple[int, Any]]:
    """(version, schema as JSON) of each version of a registry subject; [] if there is none."""
    registry = registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    try:
        try:
            versions = await registry.get_versions(name)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return []
            raise
        return [(v, json.loads((await registry.get_version(name, v)).schema.schema_str or "null")) for v in versions]
    finally:
        await registry.aclose()


class RecordingRegistryProxy:
    """An HTTP proxy in front of the real registry (own thread) that records each request's method
    and path: what the service asked of the registry, whatever the registry already held."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[tuple[str, str]] = []
        parsed = urllib.parse.urlsplit(upstream)
        origin, prefix = f"{parsed.scheme}://{parsed.netloc}", parsed.path.rstrip("/")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                proxy.requests.append((self.command, self.path))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                request = urllib.request.Request(origin + self.path, body, headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        status, data, kind = resp.status, resp.read(), resp.headers.get("Content-Type")
                except urllib.error.HTTPError as exc:
                    status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{prefix}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def test_the_service_reads_the_core_schema_and_never_writes_its_subject(
    database: Any, tmp_path: Path, merchant_with_default: Any, read_topic: Any
) -> None:
    """customer.created-value is the Core Service's: a start of ours registers nothing there, and
    events written with the Core's newer schema (a field we do not have) still decode."""
    owned = subject(topics.CUSTOMER_CREATED)
    ours = json.loads(schema_text(topics.CUSTOMER_CREATED))
    theirs = {
        **ours,
        "fields": [
            *ours["fields"],
            {"name": f"referrer_{uuid.uuid4().hex[:8]}", "type": "string", "default": ""},  # a new version each run
        ],
    }
    core = core_service_codec(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"), json.dumps(theirs))
    await core.register_all()  # the Core Service publishes its schema
    before = await subject_versions(owned)

    proxy = RecordingRegistryProxy(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    service = start_service(database, tmp_path, extra_env=events_env(CAMPAIGN_SCHEMA_REGISTRY_URL=proxy.url))
    try:
        merchant = await merchant_with_default()
        assigned = read_topic(topics.VIP_TIER_ASSIGNED)
        events = CustomerEvents(required_env("KAFKA_BROKER"), core)
        try:
            event_id = await events.created(merchant)
        finally:
            events.close()
        await assigned.wait_for(caused_by(event_id))
    finally:
        service.stop()
        proxy.close()
        await core.close()

    after = await subject_versions(owned)
    assert after == before, "the service changed a subject it does not own"
    writes = [(method, path) for method, path in proxy.requests if method != "GET"]
    assert all(owned not in path for _, path in writes), f"the service wrote to {owned}: {writes}"
    assert any(subject(topics.VIP_TIER_ASSIGNED) in path for _, path in writes), "it registers what it produces"
    assert any(method == "GET" and "/schemas/ids/" in path for method, path in proxy.requests), "writer schema by id"


async def test_a_well_formed_event_with_a_non_uuid_id_is_an_invalid_payload_with_its_headers_kept(
    event_service: Any, customer_events: Any, core_codec: Any, read_topic: Any
) -> None:
    dlq = read_topic(topics.CUSTOMER_CREATED_DLQ)
    key = f"bad-id-{uuid.uuid4()}"
    value = await core_codec.encode(
        topics.CUSTOMER_CREATED,
        {"event_id": str(uuid.uuid4()), "customer_id": "customer-42", "merchant_id": str(uuid.uuid4())},
    )
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"\xff\xfe\x00\x80"),
        ("empty", None),
        ("dup", b"1"),
        ("dup", b"2"),
    ]
    await customer_events.raw(value, key=key, headers=headers)

    [dead] = [r for r in await dlq.wait_for(with_key(key)) if r.key == key]
    assert dead.headers["dlq_reason"] == "invalid_payload"
    assert "customer_id" in dead.headers["dlq_detail"]
    assert dead.value == value
    assert dead.raw_headers[: len(headers)] == headers, "original headers byte for byte, null and repeats kept"
