"""The tracing wrappers on the OpenTelemetry SDK with an in-memory exporter: which span is whose
parent, and what context the RPC, the outbox rows and the sent headers carry."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from campaign_service import context, logs
from campaign_service.api.tracing import TracingInterceptor
from campaign_service.config import ConfigError, load_settings
from campaign_service.domain.events import OutboxMessage
from campaign_service.events.ports import InboundEvent, Outcome, Rejected
from campaign_service.events.tracing import TracedPublisher, traced_batches
from campaign_service.telemetry import start_tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture
def spans() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def hex_trace(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def hex_span(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


def traceparent(span: ReadableSpan) -> str:
    """What the W3C propagator writes for the span (flags: sampled, and since Trace Context level 2
    the SDK's random-trace-id bit for trace ids it made itself)."""
    return f"00-{hex_trace(span)}-{hex_span(span)}-{span.context.trace_flags:02x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def message(traceparent: str | None) -> OutboxMessage:
    return OutboxMessage(uuid.uuid4(), uuid.uuid4(), "vip_tier.updated", "k", {}, {"correlation_id": "c"}, traceparent)


class Recorder:
    def __init__(self, results: list[str | None]) -> None:
        self.results = results
        self.sent: list[OutboxMessage] = []

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        self.sent += batch
        return self.results

    async def close(self) -> None:
        return None


async def test_publish_span_is_a_child_of_the_stored_context_and_is_the_sent_header(spans: Any) -> None:
    tracer, exporter = spans
    inner = Recorder([None, "broker said no"])
    await TracedPublisher(inner, tracer, system="kafka").publish([message(TRACEPARENT), message(None)])

    child, root = exporter.get_finished_spans()
    assert (child.name, child.kind, hex_trace(child), parent_of(child)) == (
        "publish vip_tier.updated",
        SpanKind.PRODUCER,
        TRACE,
        PARENT,
    )
    assert child.status.status_code is StatusCode.UNSET
    assert root.parent is None, "a row written while tracing was off starts a trace"
    assert root.status.status_code is StatusCode.ERROR
    assert [m.headers["traceparent"] for m in inner.sent] == [traceparent(child), traceparent(root)]
    assert traceparent(child) == f"00-{TRACE}-{hex_span(child)}-01"
    assert inner.sent[0].headers["correlation_id"] == "c"


async def test_consumed_event_continues_its_producers_trace_and_hands_its_span_to_the_handler(spans: Any) -> None:
    tracer, exporter = spans
    seen: list[InboundEvent] = []

    async def handler(batch: Sequence[InboundEvent]) -> list[Outcome]:
        seen.extend(batch)
        return [None, Rejected("invalid_payload", "x")]

    events = [
        InboundEvent("customer.created", None, {"event_id": "e1"}, {"traceparent": TRACEPARENT}),
        InboundEvent("customer.created", None, {"event_id": "e2"}, {"traceparent": "garbage"}),
    ]
    outcomes = await traced_batches(handler, tracer, system="kafka")(events)

    assert outcomes[0] is None
    first, second, batch = exporter.get_finished_spans()
    assert batch.name == "process customer.created batch"
    assert (first.kind, hex_trace(first), parent_of(first)) == (SpanKind.CONSUMER, TRACE, PARENT)
    assert [link.context.span_id for link in first.links] == [batch.context.span_id]
    assert parent_of(second) == hex_span(batch), "without a valid traceparent: a child of the batch span"
    assert second.status.status_code is StatusCode.ERROR
    assert second.attributes is not None
    assert second.attributes["campaign.dead_letter_reason"] == "invalid_payload"
    assert [e.traceparent for e in seen] == [traceparent(first), traceparent(second)]
    assert hex_trace(second) == hex_trace(batch)


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode | None = None) -> None:
        self._metadata = metadata
        self._code = code

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code


async def test_rpc_span_continues_the_callers_traceparent_and_is_current_in_the_method(spans: Any) -> None:
    tracer, exporter = spans
    inside: dict[str, Any] = {}

    async def behavior(request: Any, ctx: Any) -> str:
        inside["traceparent"] = context.current_traceparent()
        inside["log"] = logs._add_request_fields(None, "info", {})
        return "answer"

    wrapped = TracingInterceptor(tracer).wrap("UpdateVIPTier", behavior)
    ctx = FakeContext((("traceparent", TRACEPARENT), ("x-other", "1")))
    assert await wrapped(object(), ctx) == "answer"  # type: ignore[arg-type]

    [span] = exporter.get_finished_spans()
    assert (span.name, span.kind) == ("campaign.v1.CampaignService/UpdateVIPTier", SpanKind.SERVER)
    assert (hex_trace(span), parent_of(span)) == (TRACE, PARENT)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert inside["traceparent"] == f"00-{TRACE}-{hex_span(span)}-01"
    assert (inside["log"]["trace_id"], inside["log"]["span_id"]) == (TRACE, hex_span(span))
    assert context.current_traceparent() is None, "the span is current only inside the RPC"
    assert "trace_id" not in logs._add_request_fields(None, "info", {})


async def test_rpc_without_traceparent_starts_a_trace_and_a_server_fault_marks_it(spans: Any) -> None:
    tracer, exporter = spans

    async def behavior(request: Any, ctx: Any) -> None:
        raise RuntimeError("boom")

    wrapped = TracingInterceptor(tracer).wrap("GetVIPTier", behavior)
    with pytest.raises(RuntimeError):
        await wrapped(object(), FakeContext((), grpc.StatusCode.INTERNAL))  # type: ignore[arg-type]
    [span] = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"}, "http://a:4317"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://b:1"},
            "https://b:1",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_tracing_is_on_only_with_a_standard_endpoint_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], endpoint: str | None
) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.tracing, settings.otel_endpoint) == (endpoint is not None, endpoint)
    if endpoint is None:
        assert start_tracing(settings) is None, "no provider, no exporter"


@pytest.mark.parametrize(
    ("name", "value"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
)
def test_an_otel_setting_we_cannot_honour_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load_settings()
