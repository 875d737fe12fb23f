"""Cross-cutting concerns of every CampaignService RPC, each wrapping the method's behaviour.

Order (outermost first, composed in api/server.py): metrics -> the RPC's span (api/tracing.py,
when tracing is on) -> correlation id and request log -> request decoding -> extra (auth, rate
limit) -> errors. Health and reflection have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from uuid import UUID

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from campaign_service import context, metrics
from campaign_service.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    invalid,
)
from campaign_service.domain.ids import as_uuid, is_correlation_id
from campaign_service.service.ports import RateLimiter

log = logging.getLogger(__name__)
access_log = structlog.get_logger("campaign_service.access")
_access_logger = logging.getLogger("campaign_service.access")

LOOKUP_METHODS = frozenset({"GetVIPTier", "ListVIPTiers", "EvaluateTier", "GetCustomerTier"})
# Status codes that describe the caller's request, not a fault of ours: logged at info.
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class MethodInterceptor:
    """One cross-cutting concern of the CampaignService methods.

    `wrap` runs once per method when the server is built (api/server.py composes the chain), not
    per RPC: grpc.aio's own interceptors ask for every handler anew on each call, a Python
    coroutine per interceptor per RPC, which cost more CPU than a cached lookup itself.
    """

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError


class _Undecodable:
    """Stands in for a request body that is not a valid message of the method's type."""


UNDECODABLE = _Undecodable()


def request_parser(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """The method's request parser, answering UNDECODABLE instead of raising on a bad body."""

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except message.DecodeError:
            # Left to grpc, this is UNKNOWN carrying protobuf's own message.
            return UNDECODABLE

    return parse_or_mark


class RequestDecodingInterceptor(MethodInterceptor):
    """A body that does not parse (bad wire format, invalid UTF-8 in a string field, nesting
    too deep) is INVALID_ARGUMENT; the layers inside never see it."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def decoded(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is UNDECODABLE:
                await _abort(ctx, status_for(invalid("request", "not a valid protobuf message of the request type")))
            return await behavior(request, ctx)

        return decoded


class MetricsInterceptor(MethodInterceptor):
    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        handled = {code: metrics.GRPC_HANDLED.labels(method, code.name) for code in grpc.StatusCode}
        seconds = metrics.GRPC_HANDLING_SECONDS.labels(method)
        lookup = method in LOOKUP_METHODS
        latency = {result: metrics.LOOKUP_LATENCY.labels(method, result) for result in ("hit", "miss", "none")}

        def record(code: grpc.StatusCode, elapsed: float) -> None:
            handled[code].inc()
            seconds.observe(elapsed)
            if lookup:
                latency[context.cache_result.get()].observe(elapsed)
                if code is not grpc.StatusCode.OK:
                    metrics.LOOKUP_ERRORS.labels(code.name).inc()

        async def observed(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await _timed(behavior, request, ctx, record)

        return observed


async def _timed(
    behavior: Behavior,
    request: Any,
    ctx: grpc.aio.ServicerContext[Any, Any],
    done: Callable[[grpc.StatusCode, float], None],
) -> Any:
    """Runs the RPC and reports its status code and duration to `done`, however it ends."""
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return await behavior(request, ctx)
    except BaseException:
        code = _failed_code(ctx)
        raise
    finally:
        done(code, time.perf_counter() - start)


def _failed_code(ctx: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status an RPC that raised ends with (UNKNOWN when nothing set one)."""
    code = ctx.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _request_fields(method: str, request: Any) -> dict[str, str | None]:
    """Log fields of an RPC: its method, merchant_id and tier_id as sent (truncated: not validated yet)."""
    tier = getattr(request, "tier_id", "") or getattr(getattr(request, "tier", None), "tier_id", "")
    return {
        "grpc_method": method,
        "merchant_id": getattr(request, "merchant_id", "")[:64] or None,
        "tier_id": tier[:64] or None,
    }


class CorrelationInterceptor(MethodInterceptor):
    """Takes `x-correlation-id` (or makes one) and echoes it back; gives every log line of the RPC
    the correlation id, merchant and tier, and writes one request log line (debug for successful
    lookups, info otherwise, warning for ours)."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        lookup = method in LOOKUP_METHODS
        ok_level = logging.DEBUG if lookup else logging.INFO

        def log_request(code: grpc.StatusCode, elapsed: float) -> None:
            level = ok_level
            if code is not grpc.StatusCode.OK:
                level = logging.INFO if code in _CALLER_CODES else logging.WARNING
            # Checked here: a dropped structlog event still runs its processor chain's first step.
            if _access_logger.isEnabledFor(level):
                access_log.log(level, "rpc handled", grpc_code=code.name, duration_ms=round(elapsed * 1000, 3))

        async def correlated(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            value = None
            for k, v in ctx.invocation_metadata() or ():
                if k == "x-correlation-id":
                    value = v
            if not is_correlation_id(value):
                value = context.new_correlation_id()
            context.correlation_id.set(value)
            context.cache_result.set("none")
            # Each RPC runs in its own task, so these contextvars end with it: nothing to reset.
            context.log_fields.set(_request_fields(method, request))
            # Echoed in the trailers: sending initial metadata early is a separate network
            # operation per call (~10 % of a cached lookup's CPU); trailers ride with the status.
            ctx.set_trailing_metadata((("x-correlation-id", value),))
            return await _timed(behavior, request, ctx, log_request)

        return correlated


_CODES: list[tuple[type[DomainError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (VersionConflict, grpc.StatusCode.ABORTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: DomainError) -> status_pb2.Status:
    code = next((c for t, c in _CODES if isinstance(exc, t)), grpc.StatusCode.FAILED_PRECONDITION)
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    if isinstance(exc, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
        )
        status.details.append(detail)
    return status


async def _abort(ctx: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> NoReturn:
    """Ends the RPC with `status`, its details in the `grpc-status-details-bin` trailer."""
    st = rpc_status.to_status(status)
    await ctx.abort(st.code, st.details, (*(ctx.trailing_metadata() or ()), *st.trailing_metadata))


class ErrorInterceptor(MethodInterceptor):
    """Domain errors -> status codes with details; anything else -> INTERNAL without internals."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def guarded(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, ctx)
            except DomainError as exc:
                await _abort(ctx, status_for(exc))
            except (grpc.aio.AbortError, grpc.RpcError):
                raise
            except Exception:
                log.exception("unhandled error", extra={"rpc_method": method})
                await _abort(ctx, status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))

        return guarded


def _merchant_of(request: Any) -> UUID | None:
    """The request's merchant in canonical form; None when malformed (the servicer rejects it)."""
    return as_uuid(getattr(request, "merchant_id", ""))


def exhausted_status(retry_after_s: float) -> status_pb2.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail saying when to retry."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(1_000_000, int(retry_after_s * 1e9)))  # at least 1 ms
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message=f"rate limit exceeded for this merchant; retry in {delay.ToMilliseconds()} ms",
        details=[detail],
    )


class RateLimitInterceptor(MethodInterceptor):
    """Counts every CampaignService request against its merchant's limit (the request's
    `merchant_id`; every request message has one)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def limited(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            merchant = _merchant_of(request)
            if merchant is not None:
                decision = await self._limiter.acquire(merchant)
                if not decision.allowed:
                    metrics.RATE_LIMITED.labels(method, decision.limiter).inc()
                    await _abort(ctx, exhausted_status(decision.retry_after_s))
            return await behavior(request, ctx)

        return limited
