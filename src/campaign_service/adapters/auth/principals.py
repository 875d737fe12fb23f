"""Principals from what a token verifier vouched for (JWT claims, an Auth Service answer) but
whose shape is not ours to trust: anything out of shape is Unauthenticated "invalid token"."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from campaign_service.domain.access import INVALID_TOKEN, MAX_SUBJECT_CHARS, SCOPES, Principal
from campaign_service.domain.ids import is_uuid
from campaign_service.service.errors import Unauthenticated


def make_principal(
    subject: object, merchant_id: object, scopes: Iterable[object], expires_at: float, reuse_for_s: float | None = None
) -> Principal:
    """A principal from values a verifier vouched for but whose shape is not ours to trust."""
    if not (isinstance(subject, str) and 0 < len(subject) <= MAX_SUBJECT_CHARS and subject.isprintable()):
        raise Unauthenticated(INVALID_TOKEN)
    if merchant_id in (None, ""):
        merchant = None
    elif is_uuid(merchant_id):
        merchant = UUID(str(merchant_id))
    else:
        raise Unauthenticated(INVALID_TOKEN)
    scope_set = frozenset(s for s in scopes if isinstance(s, str) and s in SCOPES)
    return Principal(subject, merchant, scope_set, expires_at, reuse_for_s)


def principal_from_claims(claims: Mapping[str, Any], merchant_claim: str) -> Principal:
    """The principal of a verified JWT: `sub`, the merchant claim, `scope` (or `scp`), `exp`."""
    scope, scp, exp = claims.get("scope"), claims.get("scp"), claims.get("exp")
    if isinstance(scope, str):
        scopes: list[object] = list(scope.split())
    elif isinstance(scp, list):
        scopes = scp
    elif scope is None and scp is None:
        scopes = []
    else:
        raise Unauthenticated(INVALID_TOKEN)
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Unauthenticated(INVALID_TOKEN)
    return make_principal(claims.get("sub"), claims.get(merchant_claim), scopes, float(exp))
