"""Authentication and tenant authorization of every CampaignService RPC, as an interceptor.

`authorization: Bearer <token>` -> the verifier's principal -> its merchant and scopes checked
against the request's `merchant_id` and the method -> `context.actor` = the token's subject.
Health and reflection RPCs are not CampaignService methods and stay open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from campaign_service import context, metrics
from campaign_service.api.interceptors import Behavior, MethodInterceptor
from campaign_service.domain.access import INVALID_TOKEN, Access, authorize
from campaign_service.domain.errors import CampaignError
from campaign_service.domain.ids import parse_uuid
from campaign_service.logs import caller_input_warning
from campaign_service.service.errors import Unauthenticated
from campaign_service.service.ports import TokenVerifier

# Methods not listed here need the admin scope: a new RPC is closed until someone decides
# (GetTierProgram, UpdateTierProgram, SetCustomerTier and the locale RPCs - GetMerchantLocales,
# UpdateMerchantLocales, GetTranslationReport - are admin on purpose).
METHOD_ACCESS: Mapping[str, Access] = {
    "GetVIPTier": Access.READ,
    "ListVIPTiers": Access.READ,
    "EvaluateTier": Access.READ,
    "GetCustomerTier": Access.READ,
    "GetCustomerTierStatus": Access.READ,
    "ListCustomerTierHistory": Access.READ,
    "CreateVIPTier": Access.WRITE,
    "UpdateVIPTier": Access.WRITE,
    "DeleteVIPTier": Access.WRITE,
}
MAX_TOKEN_CHARS = 8192
# RFC 6750 b64token: covers JWTs and the Auth Service's opaque tokens alike.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MALFORMED = "malformed authorization metadata; expected `Bearer <token>`"


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated("missing bearer token (metadata `authorization: Bearer <token>`)")
    if len(values) > 1:
        raise Unauthenticated("more than one authorization metadata entry")
    value = values[0]
    if not isinstance(value, str):
        raise Unauthenticated(_MALFORMED)
    scheme, _, token = value.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or len(token) > MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
        raise Unauthenticated(_MALFORMED)
    return token


class AuthInterceptor(MethodInterceptor):
    """Refusals are CampaignErrors (counted by their class's label, answered by ErrorInterceptor
    outside); anything unforeseen while authenticating - a library failing on a token it did
    not expect - fails closed as Unauthenticated "invalid token", with one rate-limited warning
    naming the exception's type only: a caller can provoke it at will."""

    def __init__(self, verifier: TokenVerifier, access: Mapping[str, Access] = METHOD_ACCESS) -> None:
        self._verifier = verifier
        self._access = access

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        access = self._access.get(method, Access.ADMIN)
        ok = metrics.AUTH_DECISIONS.labels("ok")

        async def authenticated(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                principal = await self._verifier.verify(bearer_token(ctx.invocation_metadata()))
                raw_merchant = getattr(request, "merchant_id", None)
                merchant = None if raw_merchant is None else parse_uuid(raw_merchant, "merchant_id")
                authorize(principal, merchant, access)
            except CampaignError as exc:
                metrics.AUTH_DECISIONS.labels(exc.label).inc()
                raise
            except Exception as exc:
                metrics.AUTH_DECISIONS.labels(Unauthenticated.label).inc()
                caller_input_warning("auth_unexpected", "authentication failed unexpectedly", error=type(exc).__name__)
                raise Unauthenticated(INVALID_TOKEN) from None
            ok.inc()
            context.actor.set(principal.subject)
            return await behavior(request, ctx)

        return authenticated
