"""Verifies tokens by asking the Auth Service (`auth.v1.AuthService/ValidateToken`, proto/auth/v1)."""

from __future__ import annotations

import time

import grpc
import structlog

from campaign_service import metrics
from campaign_service.adapters.auth.principals import make_principal
from campaign_service.api.pb import auth_grpc, auth_pb2
from campaign_service.domain.access import INVALID_TOKEN, Principal
from campaign_service.service.errors import Unauthenticated, Unavailable

log = structlog.get_logger(__name__)

# Statuses by which the Auth Service says "not a valid token" rather than "I failed".
_REJECTIONS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    }
)
_REASONS = {
    auth_pb2.INVALID_REASON_EXPIRED: "token expired",
    auth_pb2.INVALID_REASON_NOT_YET_VALID: "token not yet valid",
    auth_pb2.INVALID_REASON_REVOKED: "token revoked",
}
UNAVAILABLE = "the authentication service is unavailable"


class AuthServiceVerifier:
    """One call per token, with a deadline and no retry: the cache in front absorbs repeats, and
    a caller retrying on UNAVAILABLE is better placed to back off than we are."""

    def __init__(self, channel: grpc.aio.Channel, audience: str, timeout_s: float) -> None:
        self._stub = auth_grpc.AuthServiceStub(channel)
        self._audience, self._timeout_s = audience, timeout_s

    async def verify(self, token: str) -> Principal:
        started = time.perf_counter()
        try:
            resp = await self._stub.ValidateToken(
                auth_pb2.ValidateTokenRequest(token=token, audience=self._audience), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            rejected = exc.code() in _REJECTIONS
            metrics.AUTH_SERVICE_CALLS.labels("invalid" if rejected else "unavailable").observe(
                time.perf_counter() - started
            )
            if rejected:
                raise Unauthenticated(INVALID_TOKEN) from None
            log.warning("auth service call failed", grpc_code=exc.code().name)
            raise Unavailable(UNAVAILABLE) from None
        metrics.AUTH_SERVICE_CALLS.labels("valid" if resp.valid else "invalid").observe(time.perf_counter() - started)
        if not resp.valid:
            raise Unauthenticated(_REASONS.get(resp.reason, INVALID_TOKEN))
        expires_at = resp.expires_at.seconds + resp.expires_at.nanos / 1e9 if resp.HasField("expires_at") else 0.0
        if expires_at <= time.time():
            raise Unauthenticated("token expired")
        reuse_for_s = float(resp.max_cache_seconds) if resp.HasField("max_cache_seconds") else None
        return make_principal(resp.subject, resp.merchant_id, resp.scopes, expires_at, reuse_for_s)
