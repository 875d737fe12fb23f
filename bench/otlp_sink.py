"""An OTLP/gRPC trace receiver for benchmarks: counts the spans it gets and drops them. Writes the
running total to COUNT_FILE after each export (the bench reads it to check spans really went out).

    python -m bench.otlp_sink PORT COUNT_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: Path) -> None:
        self.spans = 0
        self._out = out

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self._out.write_text(str(self.spans))
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(port: int, out: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(out), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
