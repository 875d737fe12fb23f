"""Per-request values that interceptors set and the layers below read (correlation id, trace, actor)."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
actor: ContextVar[str] = ContextVar("actor", default="anonymous")


def new_correlation_id() -> str:
    """A random (version 4) UUID. Ids, not secrets: the process's PRNG, no system call per request."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _random_id(bits: int) -> str:
    """A non-zero random id of `bits` bits in lowercase hex (W3C trace and span ids)."""
    return f"{random.getrandbits(bits) or 1:0{bits // 4}x}"


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
    value = Trace(m[2], _random_id(64), m[4]) if m is not None and valid else Trace(_random_id(128), _random_id(64))
    trace.set(value)
    return value


def current_trace() -> Trace:
    return trace.get() or continue_trace(None)


def outgoing_headers() -> dict[str, str]:
    """Headers for a message produced on behalf of the current request or event (Kafka, outbox):
    the correlation id and a W3C `traceparent` naming our span as the consumer's parent."""
    return {"correlation_id": current_correlation_id(), "traceparent": current_trace().traceparent}
