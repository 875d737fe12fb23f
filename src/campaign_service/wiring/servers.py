"""The listening side: TLS credentials, the HTTP probes and metrics, the gRPC server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health
from opentelemetry.trace import Tracer

from campaign_service.api.http import Check, build_http_app
from campaign_service.api.interceptors import MethodInterceptor
from campaign_service.api.server import build_grpc_server, set_serving
from campaign_service.api.servicer import CampaignServicer
from campaign_service.api.tls import ReloadingServerCredentials, TlsFilesError
from campaign_service.config import ConfigError, Settings


def tls_credentials(settings: Settings) -> ReloadingServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        return ReloadingServerCredentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except (OSError, TlsFilesError) as exc:
        raise ConfigError(f"CAMPAIGN_TLS_CERT_FILE: cannot use the TLS files ({exc})") from None


def tls_mode(tls: ReloadingServerCredentials | None) -> str:
    return "mtls" if tls and tls.require_client_auth else "tls" if tls else "off"


@dataclass(frozen=True)
class Probes:
    """The HTTP side, set up; `listen()` opens its port (just before gRPC serves, so that /health
    and /ready never answer while gRPC does not) and returns it."""

    runner: web.AppRunner
    settings: Settings

    async def listen(self) -> int:
        await web.TCPSite(self.runner, self.settings.bind_host, self.settings.http_port).start()
        return self.runner.addresses[0][1] if self.runner.addresses else self.settings.http_port


@contextlib.asynccontextmanager
async def http(settings: Settings, checks: list[Check], draining: Callable[[], bool]) -> AsyncIterator[Probes]:
    """/health, /ready and /metrics, set up now and closed on leaving the block: entered before
    the event side, they outlive its drain. `checks` is read on every /ready."""
    runner = web.AppRunner(build_http_app(checks, draining=draining), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        yield Probes(runner, settings)
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int


@contextlib.asynccontextmanager
async def grpc_server(
    settings: Settings,
    tls: ReloadingServerCredentials | None,
    servicer: CampaignServicer,
    interceptors: Sequence[MethodInterceptor],
    tracer: Tracer | None = None,
) -> AsyncIterator[GrpcServer]:
    """CampaignService (behind `interceptors`), health and reflection serve while the block runs.
    Leaving it refuses new RPCs and gives the ones in flight CAMPAIGN_SHUTDOWN_GRACE_S to finish."""
    server, health_servicer = build_grpc_server(
        servicer, extra_interceptors=interceptors, max_message_bytes=settings.grpc_max_message_bytes, tracer=tracer
    )
    try:
        address = f"{settings.bind_host}:{settings.grpc_port}"
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
        await server.start()
        await set_serving(health_servicer, True)
        yield GrpcServer(server, health_servicer, port)
    finally:
        await server.stop(settings.shutdown_grace_s)
