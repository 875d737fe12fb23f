"""Tokens for tests: the suite's own signing key, which `start_service` makes the service trust
(a JWKS file), and channels that send a bearer token with every call.

    from tests.tokens import mint_token, auth_channel
    token = mint_token(merchant, scopes=["tiers:read"], subject="alice")
    async with auth_channel(svc.target, token) as channel: ...   # token None -> admin token
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from campaign_service.adapters.auth.dev import token_claims
from campaign_service.domain.access import SCOPE_ADMIN

ISSUER = "campaign-service-tests"
AUDIENCE = "campaign-service"
ADMIN_SUBJECT = "test-admin"


class TokenIssuer:
    """An ES256 key pair with a key id; `jwks()` is what the service is told to trust."""

    def __init__(self, kid: str | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid or f"test-{uuid.uuid4().hex[:8]}"

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def write_jwks(self, path: Path) -> Path:
        """Replaces `path` atomically: a service may be polling it."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(self.jwks()))
        tmp.replace(path)
        return path

    def mint(
        self,
        merchant: uuid.UUID | str | None = None,
        scopes: Iterable[str] = (SCOPE_ADMIN,),
        subject: str = ADMIN_SUBJECT,
        ttl_s: int = 900,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed token; `claims` override or add claims (e.g. exp=..., aud=..., iss=None drops iss)."""
        body = token_claims(
            issuer=ISSUER, audience=AUDIENCE, merchant_id=merchant, scopes=scopes, subject=subject, ttl_s=ttl_s
        )
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid, **(headers or {})})


# One key per test session: every service start_service() runs trusts it.
SESSION_ISSUER = TokenIssuer()


def mint_token(
    merchant: uuid.UUID | str | None = None,
    scopes: Iterable[str] = (SCOPE_ADMIN,),
    subject: str = ADMIN_SUBJECT,
    **kwargs: Any,
) -> str:
    """A token from the session key: by default an admin token good for every merchant."""
    return SESSION_ISSUER.mint(merchant, scopes, subject, **kwargs)


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        metadata: Sequence[tuple[str, Any]] = list(client_call_details.metadata or ())
        metadata = [*metadata, ("authorization", f"Bearer {self.token}")]
        return await continuation(client_call_details._replace(metadata=metadata), request)


def auth_channel(
    target: str,
    token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to `target` sending `token` (default: a fresh admin token) on every call.

    For a channel without a token, use grpc.aio.insecure_channel(target) directly.
    """
    interceptors = [BearerToken(token if token is not None else mint_token())]
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
