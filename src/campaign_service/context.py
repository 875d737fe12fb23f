"""Per-request values that interceptors set and the layers below read (correlation id, trace, actor)."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
actor: ContextVar[str] = ContextVar("actor", default="anonymous")


def current_correlation_id() -> str:
    value = correlation_id.get()
    if not value:
        value = str(uuid.uuid4())
        correlation_id.set(value)
    return value


# Log fields of the RPC being handled (grpc_method, merchant_id, tier_id), set by the correlation
# interceptor and added to every log line by logs.py: one contextvar instead of one per field.
log_fields: ContextVar[Mapping[str, str | None] | None] = ContextVar("log_fields", default=None)

# How the cache answered the current lookup: "hit", "miss", or "none" when no cache is in use.
cache_result: ContextVar[str] = ContextVar("cache_result", default="none")


@dataclass(frozen=True)
class Trace:
    """W3C Trace Context of the current unit of work: its trace, our span in it, the flags."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

trace: ContextVar[Trace | None] = ContextVar("trace", default=None)


def continue_trace(traceparent: str | None) -> Trace:
    """Joins the caller's trace (a `traceparent` from gRPC metadata or a Kafka header) with a new
    span of ours, or starts a trace when the header is absent or invalid (W3C rules: version ff,
    an all-zero trace or parent id are invalid; later versions may append fields)."""
    m = _TRACEPARENT.match(traceparent.strip()) if traceparent else None
    valid = (
        m is not None
        and m[1] != "ff"
        and (m[1] != "00" or len(m[0]) == 55)  # version 00 has exactly four fields
        and m[2] != _ZERO_TRACE
        and m[3] != _ZERO_SPAN
    )
    if m is not None and valid:
        value = Trace(m[2], secrets.token_hex(8), m[4])
    else:
        value = Trace(secrets.token_hex(16), secrets.token_hex(8))
    trace.set(value)
    return value


def current_trace() -> Trace:
    return trace.get() or continue_trace(None)


def outgoing_headers() -> dict[str, str]:
    """Headers for a message produced on behalf of the current request or event (Kafka, outbox):
    the correlation id and a W3C `traceparent` naming our span as the consumer's parent."""
    return {"correlation_id": current_correlation_id(), "traceparent": current_trace().traceparent}
