"""Cross-cutting concerns of every CampaignService RPC, each wrapping the method's behaviour.

Order (outermost first, composed in api/server.py): errors -> metrics -> the RPC's span
(api/tracing.py, when tracing is on) -> correlation id and request log -> request decoding ->
extra (auth, rate limit). Errors is outermost so that whatever any layer raises ends as a mapped
status, never grpc's UNKNOWN with the exception's text; the layers inside it name the same code
for the same exception (`code_of`). Health and reflection have none.
"""

from __future__ import annotations

import asyncio
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
from campaign_service.domain.errors import CampaignError, InvalidArgument, invalid
from campaign_service.domain.ids import as_uuid, is_correlation_id
from campaign_service.service.errors import RateLimited
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
                raise invalid("request", "not a valid protobuf message of the request type")
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
    except BaseException as exc:
        code = code_of(exc, ctx)
        raise
    finally:
        done(code, time.perf_counter() - start)


def code_of(exc: BaseException, ctx: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status an RPC that raised `exc` ends with, as ErrorInterceptor will answer it."""
    if isinstance(exc, CampaignError):
        return grpc.StatusCode[exc.code]
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = ctx.code() if isinstance(exc, grpc.aio.AbortError) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.INTERNAL


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
            # Echoed in the trailers: sending initial metadata early is a separate network
            # operation per call (~10 % of a cached lookup's CPU); trailers ride with the status.
            # Set first, so that even a failure of the steps below answers with it.
            ctx.set_trailing_metadata((("x-correlation-id", value),))
            context.cache_result.set("none")
            # Each RPC runs in its own task, so these contextvars end with it: nothing to reset.
            context.log_fields.set(_request_fields(method, request))
            return await _timed(behavior, request, ctx, log_request)

        return correlated


def status_for(exc: CampaignError) -> status_pb2.Status:
    """The status an error answers: the code its class names, its message, and the details that
    let a client act on it (the fields at fault, when to retry)."""
    status = status_pb2.Status(code=grpc.StatusCode[exc.code].value[0], message=exc.message)
    if isinstance(exc, RateLimited):
        status.details.append(_retry_info(exc.retry_after_s))
    elif isinstance(exc, InvalidArgument):
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


INTERNAL_MESSAGE = "internal error"


class ErrorInterceptor(MethodInterceptor):
    """CampaignError -> the status its class names, with details; anything else (a fault of
    ours) -> INTERNAL with a fixed message, and one error line with the correlation id and the
    traceback. The caller never reads an exception's text."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def guarded(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, ctx)
            except CampaignError as exc:
                await _abort(ctx, status_for(exc))
            except grpc.aio.AbortError:
                raise  # a status was set already
            except Exception:
                log.exception(
                    "unhandled error",
                    extra={"rpc_method": method, "correlation_id": context.correlation_id.get()},
                )
                await _abort(ctx, status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE))

        return guarded


def _merchant_of(request: Any) -> UUID | None:
    """The request's merchant in canonical form; None when malformed (the servicer rejects it)."""
    return as_uuid(getattr(request, "merchant_id", ""))


def _retry_info(retry_after_s: float) -> any_pb2.Any:
    """A google.rpc.RetryInfo detail saying when to retry."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(1_000_000, int(retry_after_s * 1e9)))  # at least 1 ms
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return detail


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
                    raise RateLimited(decision.retry_after_s)
            return await behavior(request, ctx)

        return limited
