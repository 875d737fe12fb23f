"""A real gRPC `auth.v1.AuthService` for tests: tokens it knows map to fixed answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from campaign_service.api.pb import auth_grpc, auth_pb2


def valid(
    subject: str,
    merchant: uuid.UUID | None,
    scopes: Iterable[str],
    ttl_s: float = 600,
    max_cache_seconds: int | None = None,
) -> auth_pb2.ValidateTokenResponse:
    resp = auth_pb2.ValidateTokenResponse(
        valid=True, subject=subject, merchant_id=str(merchant) if merchant else "", scopes=list(scopes)
    )
    if max_cache_seconds is not None:
        resp.max_cache_seconds = max_cache_seconds
    resp.expires_at.FromNanoseconds(int((time.time() + ttl_s) * 1e9))
    return resp


@dataclass
class CannedAuthService(auth_grpc.AuthServiceServicer):
    """Answers from `tokens`; unknown tokens are `valid = false, MALFORMED`."""

    tokens: dict[str, auth_pb2.ValidateTokenResponse] = field(default_factory=dict)
    calls: list[auth_pb2.ValidateTokenRequest] = field(default_factory=list)
    delay_s: float = 0.0
    fail_with: grpc.StatusCode | None = None

    async def ValidateToken(
        self,
        request: auth_pb2.ValidateTokenRequest,
        context: grpc.aio.ServicerContext[auth_pb2.ValidateTokenRequest, auth_pb2.ValidateTokenResponse],
    ) -> auth_pb2.ValidateTokenResponse:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            await context.abort(self.fail_with, "auth says no")
        return self.tokens.get(
            request.token, auth_pb2.ValidateTokenResponse(valid=False, reason=auth_pb2.INVALID_REASON_MALFORMED)
        )


@dataclass
class RunningAuthServer:
    servicer: CannedAuthService
    server: grpc.aio.Server
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def auth_server(port: int = 0) -> AsyncIterator[RunningAuthServer]:
    servicer = CannedAuthService()
    server = grpc.aio.server()
    auth_grpc.add_AuthServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield RunningAuthServer(servicer, server, bound)
    finally:
        await server.stop(0)
