"""Cross-cutting concerns of every CampaignService RPC, as grpc.aio server interceptors.

Order (outermost first): metrics -> correlation id -> extra (auth, rate limit) -> errors. Health
and reflection RPCs pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from uuid import UUID

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from campaign_service import context, metrics
from campaign_service.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from campaign_service.service.ports import RateLimiter

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/campaign.v1.CampaignService/"
LOOKUP_METHODS = frozenset({"GetVIPTier", "ListVIPTiers", "EvaluateTier", "GetCustomerTier"})
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _wrap(
    handler: grpc.RpcMethodHandler[Req, Resp] | None, wrap: Callable[[Behavior], Behavior]
) -> grpc.RpcMethodHandler[Req, Resp] | None:
    """Returns `handler` with its unary-unary behaviour wrapped (other kinds are left alone)."""
    if handler is None or handler.unary_unary is None:
        return handler
    # grpc.aio registers coroutine functions where the stubs say plain callables.
    behavior = cast(Behavior, handler.unary_unary)
    return grpc.unary_unary_rpc_method_handler(
        wrap(behavior),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Applies `wrap` to CampaignService methods only."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if not method.startswith(SERVICE_PREFIX):
            return handler
        name = method[len(SERVICE_PREFIX) :]
        return _wrap(handler, lambda behavior: self.wrap(name, behavior))


class MetricsInterceptor(_ServiceInterceptor):
    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        handled = {code: metrics.GRPC_HANDLED.labels(method, code.name) for code in grpc.StatusCode}
        seconds = metrics.GRPC_HANDLING_SECONDS.labels(method)
        lookup = method in LOOKUP_METHODS

        async def observed(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, ctx)
            except BaseException:
                code = ctx.code() or grpc.StatusCode.UNKNOWN
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                elapsed = time.perf_counter() - start
                handled[code].inc()
                seconds.observe(elapsed)
                if lookup:
                    metrics.LOOKUP_LATENCY.labels(method, context.cache_result.get()).observe(elapsed)
                    if code is not grpc.StatusCode.OK:
                        metrics.LOOKUP_ERRORS.labels(code.name).inc()

        return observed


class CorrelationInterceptor(_ServiceInterceptor):
    """Takes `x-correlation-id` from metadata (or makes one) and echoes it back."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def correlated(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            value = ""
            for key, val in ctx.invocation_metadata() or ():
                if key == "x-correlation-id" and isinstance(val, str) and _CORRELATION_ID.match(val):
                    value = val
                    break
            value = value or str(uuid.uuid4())
            context.correlation_id.set(value)
            context.cache_result.set("none")
            await ctx.send_initial_metadata((("x-correlation-id", value),))
            return await behavior(request, ctx)

        return correlated


_CODES: list[tuple[type[DomainError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (VersionConflict, grpc.StatusCode.ABORTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
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


async def _abort(ctx: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    """Ends the RPC with `status`, its details in the `grpc-status-details-bin` trailer."""
    st = rpc_status.to_status(status)
    await ctx.abort(st.code, st.details, st.trailing_metadata)


class ErrorInterceptor(_ServiceInterceptor):
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
    value = getattr(request, "merchant_id", "")
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


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


class RateLimitInterceptor(_ServiceInterceptor):
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
