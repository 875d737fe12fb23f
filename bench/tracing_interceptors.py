"""What a span per RPC costs by the two ways of making it: our MethodInterceptor on the
OpenTelemetry API (api/tracing.py, composed once per method) against the grpc aio instrumentation
(opentelemetry-instrumentation-grpc's `aio_server_interceptor`, a grpc.aio ServerInterceptor), on a
no-op GetVIPTier handler so nothing else is measured. Both with the SDK's provider and batch
processor, its exporter dropping the spans (export is the same for both; bench.lookup measures it).
The server is pinned to one core, ghz to the other; CPU per request from /proc.

    .venv/bin/python -m bench.tracing_interceptors [--seconds 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import uvloop
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.grpc_suite import SERVER_CORE, Scenario, ghz, ghz_binary
from bench.harness import free_port, start
from bench.lookup import cpu_seconds
from bench.noop_server import TIER
from campaign_service.api.interceptors import Behavior
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.server import SERVICE_NAME
from campaign_service.api.tracing import TracingInterceptor

MODES = {
    "no tracing": "none",
    "span per RPC: our MethodInterceptor": "ours",
    "span per RPC: grpc aio instrumentation": "instrumentation",
}


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def serve(mode: str, port: int) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropping()))
    trace.set_tracer_provider(provider)

    async def get_tier(request: Any, context: Any) -> pb.VIPTier:
        return TIER

    behavior: Behavior = get_tier
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if mode == "ours":
        behavior = TracingInterceptor(provider.get_tracer("bench")).wrap("GetVIPTier", get_tier)
    elif mode == "instrumentation":
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(tracer_provider=provider))  # type: ignore[no-untyped-call]
    handler = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=pb.GetVIPTierRequest.FromString,
        response_serializer=pb.VIPTier.SerializeToString,
    )
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"GetVIPTier": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    binary = ghz_binary()
    request = {"merchant_id": "00000000-0000-0000-0000-000000000002", "tier_id": "gold"}
    metadata = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode in MODES.items():
            port = free_port()
            cmd = [sys.executable, "-m", "bench.tracing_interceptors", "--serve", mode, str(port)]
            proc = start(cmd, port=port, core=SERVER_CORE, env=dict(os.environ), log=Path(tmp, f"{mode}.log"))
            scenario = Scenario(name, "", "GetVIPTier", request, metadata)
            try:
                ghz(binary, port, scenario, seconds=2, concurrency=args.concurrency, rps=None)  # warm-up
                before = cpu_seconds(proc.proc.pid)
                top = ghz(binary, port, scenario, seconds=args.seconds, concurrency=args.concurrency, rps=None)
                cpu_us = (cpu_seconds(proc.proc.pid) - before) / max(1, top["count"]) * 1e6
            finally:
                proc.stop()
            rows.append((name, top["rps"], cpu_us, top["errors"]))
            print(f"{name:<42} {top['rps']:>8.0f} rps  errors={top['errors']}", flush=True)
    print(f"\n{'server':<42} {'rps':>7} {'CPU µs/req':>10} {'+ µs/req':>9}")
    base = rows[0][2]
    for name, rps, cpu_us, _ in rows:
        print(f"{name:<42} {rps:>7.0f} {cpu_us:>10.0f} {cpu_us - base:>9.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        uvloop.run(serve(sys.argv[2], int(sys.argv[3])))
    else:
        main()
