"""Per-request values that interceptors set and the layers below read (correlation id, actor, the
current trace as OpenTelemetry holds it)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from contextvars import ContextVar

from opentelemetry import trace

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
actor: ContextVar[str] = ContextVar("actor", default="anonymous")


def new_correlation_id() -> str:
    """A random (version 4) UUID. Ids, not secrets: the process's PRNG, no system call per request."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def current_correlation_id() -> str:
    value = correlation_id.get()
    if not value:
        value = new_correlation_id()
        correlation_id.set(value)
    return value


# Log fields of the RPC being handled (grpc_method, merchant_id, tier_id), set by the correlation
# interceptor and added to every log line by logs.py: one contextvar instead of one per field.
log_fields: ContextVar[Mapping[str, str | None] | None] = ContextVar("log_fields", default=None)

# How the cache answered the current lookup: "hit", "miss", or "none" when no cache is in use.
cache_result: ContextVar[str] = ContextVar("cache_result", default="none")


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current OpenTelemetry span (the RPC's, or the consumed
    event's), stored with the outbox rows written on its behalf; None when there is no span
    (tracing off), so nothing is stored or sent."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return traceparent_of(span_context)


def traceparent_of(span_context: trace.SpanContext) -> str:
    """A span context as a W3C version-00 `traceparent` (what TraceContextTextMapPropagator writes)."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
