"""Cross-cutting concerns of every CampaignService RPC, as grpc.aio server interceptors.

Order (outermost first): metrics -> correlation id -> request decoding -> extra (auth, rate
limit) -> errors. Health and reflection RPCs pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf import any_pb2, message
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

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/campaign.v1.CampaignService/"
LOOKUP_METHODS = frozenset({"GetVIPTier", "ListVIPTiers", "EvaluateTier", "GetCustomerTier"})
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


Req = TypeVar("Req")
Resp = TypeVar("Resp")


Deserializer = Callable[[bytes], Any]


def _wrap(
    handler: grpc.RpcMethodHandler[Req, Resp] | None,
    wrap: Callable[[Behavior], Behavior],
    deserializer: Callable[[Deserializer | None], Deserializer | None],
) -> grpc.RpcMethodHandler[Req, Resp] | None:
    """Returns `handler` with its unary-unary behaviour wrapped (other kinds are left alone)."""
    if handler is None or handler.unary_unary is None:
        return handler
    # grpc.aio registers coroutine functions where the stubs say plain callables.
    behavior = cast(Behavior, handler.unary_unary)
    return grpc.unary_unary_rpc_method_handler(
        wrap(behavior),
        request_deserializer=deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class _ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Applies `wrap` to CampaignService methods only."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    def deserializer(self, deserialize: Deserializer | None) -> Deserializer | None:
        """How the request body is parsed; the default keeps the method's own parser."""
        return deserialize

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
        return _wrap(handler, lambda behavior: self.wrap(name, behavior), self.deserializer)


class _Undecodable:
    """Stands in for a request body that is not a valid message of the method's type."""


UNDECODABLE = _Undecodable()


class RequestDecodingInterceptor(_ServiceInterceptor):
    """A body that does not parse (bad wire format, invalid UTF-8 in a string field, nesting
    too deep) is INVALID_ARGUMENT; the layers inside never see it."""

    def deserializer(self, deserialize: Deserializer | None) -> Deserializer | None:
        if deserialize is None:
            return None

        def parse(data: bytes) -> Any:
            try:
                return deserialize(data)
            except message.DecodeError:
                # Left to grpc, this is UNKNOWN carrying protobuf's own message.
                return UNDECODABLE

        return parse

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def decoded(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is UNDECODABLE:
                await _abort(ctx, status_for(invalid("request", "not a valid protobuf message of the request type")))
            return await behavior(request, ctx)

        return decoded


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
                if key == "x-correlation-id" and isinstance(val, str) and _CORRELATION_ID.fullmatch(val):
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
