"""The grpc.aio server: interceptors, CampaignService, health and reflection."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from campaign_service.api.interceptors import (
    CorrelationInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    RequestDecodingInterceptor,
)
from campaign_service.api.pb import campaign_grpc, campaign_pb2
from campaign_service.api.servicer import CampaignServicer

SERVICE_NAME = campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name


def build_grpc_server(
    servicer: CampaignServicer,
    *,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_message_bytes: int = 256 * 1024,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Interceptors run outermost first: metrics, correlation id, request decoding, `extra` (auth,
    rate limit), errors."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        MetricsInterceptor(),
        CorrelationInterceptor(),
        RequestDecodingInterceptor(),
        *extra_interceptors,
        ErrorInterceptor(),
    ]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    campaign_grpc.add_CampaignServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
