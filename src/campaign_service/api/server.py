"""The grpc.aio server: CampaignService behind its interceptor chain, health and reflection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from campaign_service.api.interceptors import (
    CorrelationInterceptor,
    ErrorInterceptor,
    MethodInterceptor,
    MetricsInterceptor,
    RequestDecodingInterceptor,
    request_parser,
)
from campaign_service.api.pb import campaign_pb2
from campaign_service.api.servicer import CampaignServicer
from campaign_service.api.tracing import TracingInterceptor

SERVICE = campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"]
SERVICE_NAME = SERVICE.full_name


def serialize_response(response: Any) -> bytes:
    """A message, or an answer the servicer already holds serialized (a cached lookup) as is."""
    if type(response) is bytes:
        return response
    return bytes(response.SerializeToString())


def campaign_handlers(
    servicer: CampaignServicer, interceptors: Sequence[MethodInterceptor]
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Every CampaignService method of the proto, its servicer method wrapped by `interceptors`
    (outermost first), composed here once rather than on every RPC."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        behavior = getattr(servicer, method.name)
        for interceptor in reversed(interceptors):
            behavior = interceptor.wrap(method.name, behavior)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=request_parser(message_factory.GetMessageClass(method.input_type).FromString),
            response_serializer=serialize_response,
        )
    return handlers


def build_grpc_server(
    servicer: CampaignServicer,
    *,
    extra_interceptors: Sequence[MethodInterceptor] = (),
    max_message_bytes: int = 256 * 1024,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """CampaignService's interceptors run outermost first: errors (so nothing any of them raises
    reaches a caller unmapped), metrics, the RPC's span (only with a `tracer`: tracing on),
    correlation id, request decoding, `extra` (auth, rate limit). Health and reflection have none."""
    interceptors: list[MethodInterceptor] = [
        ErrorInterceptor(),
        MetricsInterceptor(),
        *([TracingInterceptor(tracer)] if tracer is not None else []),
        CorrelationInterceptor(),
        RequestDecodingInterceptor(),
        *extra_interceptors,
    ]
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    handlers = campaign_handlers(servicer, interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
