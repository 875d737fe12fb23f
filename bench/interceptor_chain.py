"""What each CampaignService interceptor adds to a cached GetVIPTier, in-process and without grpc:
the composed handler (api/server.py) called with a parsed request and a stand-in context, each
row adding one more interceptor. The cache is the in-process one, the token verified before, the
rate limit local; so the figures are our Python per call, not grpc's or Redis's.

The last rows are the whole chain with tracing off (the tracing interceptor is not composed: the
service's chain when no OTLP endpoint is set) and on (api/tracing.py with the SDK's provider and
batch processor; its exporter drops the spans, so OTLP encoding and sending are not in it;
bench.lookup measures those on the real server), measured in turns in one run.

    taskset -c 1 .venv/bin/python -m bench.interceptor_chain [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from campaign_service.adapters.auth.cache import CachingVerifier
from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.memory.limiter import LocalRateLimiter
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.interceptors import (
    CorrelationInterceptor,
    ErrorInterceptor,
    MethodInterceptor,
    MetricsInterceptor,
    RateLimitInterceptor,
    RequestDecodingInterceptor,
)
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.server import campaign_handlers
from campaign_service.api.servicer import CampaignServicer
from campaign_service.api.tracing import TracingInterceptor
from campaign_service.domain.access import Principal
from campaign_service.domain.locales import display_key
from campaign_service.service.ports import ViewKey
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService

MERCHANT = uuid.uuid4()


class _Verifier:
    async def verify(self, token: str) -> Principal:
        return Principal("bench", MERCHANT, frozenset({"tiers:read"}), time.time() + 3600)


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Context:
    """The ServicerContext methods the interceptors use on a successful call."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", "Bearer " + "x" * 600),
            ("user-agent", "bench"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        )

    def set_trailing_metadata(self, metadata: Any) -> None:
        return None

    def code(self) -> None:
        return None


async def _call(handler: Any, body: bytes, ctx: _Context) -> None:
    handler.response_serializer(await handler.unary_unary(handler.request_deserializer(body), ctx))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    cache = MemoryViewCache(ttl_s=3600, max_bytes=1 << 20)
    key = ViewKey(MERCHANT, "gold", display_key("ar"))
    ticket = (await cache.lookup(key)).ticket
    assert ticket is not None
    await cache.fill(key, ticket, pb.VIPTier(tier_id="gold", name="Gold", display_name="ذهبي").SerializeToString())
    # Never reached: every read is a cache hit.
    tiers = TierService(uow=None)  # type: ignore[arg-type]
    servicer = CampaignServicer(tiers, TierReads(tiers, cache, render_tier, render_tiers))
    chain: list[MethodInterceptor] = [
        ErrorInterceptor(),
        MetricsInterceptor(),
        CorrelationInterceptor(),
        RequestDecodingInterceptor(),
        AuthInterceptor(CachingVerifier(_Verifier(), 100, 300)),
        RateLimitInterceptor(LocalRateLimiter(10**9, 1.0)),
    ]
    body = pb.GetVIPTierRequest(merchant_id=str(MERCHANT), tier_id="gold", locale="ar").SerializeToString()
    ctx = _Context()
    previous = 0.0
    for depth in range(len(chain) + 1):
        handler = campaign_handlers(servicer, chain[:depth])["GetVIPTier"]
        for _ in range(n // 10):  # warm-up
            await asyncio.create_task(_call(handler, body, ctx))
        start = time.process_time()
        for _ in range(n):
            await asyncio.create_task(_call(handler, body, ctx))  # grpc runs each call in a task too
        per_call = (time.process_time() - start) / n * 1e6
        name = type(chain[depth - 1]).__name__ if depth else "servicer + cache (no interceptor)"
        added = f"  (+{per_call - previous:5.1f})" if depth else ""
        print(f"{name:<36} {per_call:6.1f} µs/call{added}")
        previous = per_call
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropping()))
    variants = {
        "tracing off": campaign_handlers(servicer, chain)["GetVIPTier"],
        "tracing on": campaign_handlers(
            servicer, [chain[0], TracingInterceptor(provider.get_tracer("bench")), *chain[1:]]
        )["GetVIPTier"],
    }
    totals = dict.fromkeys(variants, 0.0)
    rounds = 5
    for _ in range(rounds):  # in turns, so drift of the machine hits both alike
        for name, handler in variants.items():
            for _ in range(n // 10):
                await asyncio.create_task(_call(handler, body, ctx))
            start = time.process_time()
            for _ in range(n):
                await asyncio.create_task(_call(handler, body, ctx))
            totals[name] += time.process_time() - start
    provider.shutdown()
    off, on = (totals[name] / (rounds * n) * 1e6 for name in variants)
    print(f"{'whole chain, tracing off':<36} {off:6.1f} µs/call")
    print(f"{'whole chain, tracing on':<36} {on:6.1f} µs/call  (+{on - off:5.1f})")


if __name__ == "__main__":
    asyncio.run(main())
