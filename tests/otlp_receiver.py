"""A small OTLP/gRPC trace receiver for tests: opentelemetry-proto's TraceService on a loopback
port, keeping every span exported to it (what a collector would receive from the service)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int  # trace_pb2.Span.SPAN_KIND_*
    trace_id: str  # lowercase hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    links: tuple[str, ...]  # span ids
    attributes: dict[str, Any]
    status_code: int  # trace_pb2.Status.STATUS_CODE_*


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: list[ReceivedSpan]) -> None:
        self._spans = spans

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self._spans.append(_received(str(resource.get("service.name", "")), s))
        return trace_service_pb2.ExportTraceServiceResponse()


def _received(service: str, s: trace_pb2.Span) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=s.name,
        kind=s.kind,
        trace_id=s.trace_id.hex(),
        span_id=s.span_id.hex(),
        parent_span_id=s.parent_span_id.hex(),
        links=tuple(link.span_id.hex() for link in s.links),
        attributes={a.key: _value(a.value) for a in s.attributes},
        status_code=s.status.code,
    )


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self.spans), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (http: no TLS)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)

    async def wait_for(self, match: Callable[[ReceivedSpan], bool], within: float = 15.0) -> ReceivedSpan:
        """The first received span that `match`es, waiting for it (the service exports in batches)."""
        deadline = time.monotonic() + within
        while True:
            found = next((s for s in self.spans if match(s)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                names = sorted({(s.name, s.trace_id) for s in self.spans})
                raise AssertionError(f"no such span in {within}s; received {names!r}"[:3000])
            await asyncio.sleep(0.05)
