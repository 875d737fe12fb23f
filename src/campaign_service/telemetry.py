"""OpenTelemetry tracing: an SDK tracer provider exporting over OTLP/gRPC, or nothing at all.

With an endpoint configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or `_TRACES_ENDPOINT`, see config.py)
the process installs the SDK's TracerProvider with a batch span processor and the OTLP gRPC
exporter, and the composition root adds the tracing wrappers: a span per RPC
(api/tracing.py), per relay publish and per consumed event (events/tracing.py). Without one,
no provider is installed and none of those wrappers is composed: a lookup makes no span and
passes through no tracing code (bench.interceptor_chain and bench.lookup compare off and on),
outbox rows store no `traceparent` and no Kafka message carries one. Propagation is W3C Trace
Context only. An unreachable collector costs no RPC and does not hold up the stop
(tests/e2e/test_tracing.py).
"""

from __future__ import annotations

import asyncio

import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from campaign_service.config import Settings

log = structlog.get_logger(__name__)

TRACER_NAME = "campaign_service"
PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """The installed provider; `close` flushes what the batch processor still holds."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)

    async def close(self) -> None:
        # shutdown() exports the queued spans (bounded by the exporter's timeout) on this thread.
        await asyncio.to_thread(self.provider.shutdown)


def start_tracing(settings: Settings) -> Tracing | None:
    """Installs the SDK provider and OTLP exporter when tracing is configured; None otherwise."""
    if not settings.tracing:
        return None
    # From OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; our name when they give none.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "campaign-service"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    trace.set_tracer_provider(provider)
    log.info("tracing on: spans exported over OTLP/gRPC", endpoint=settings.otel_endpoint)
    return Tracing(provider)
