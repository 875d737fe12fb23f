"""Verifies JWTs in-process against public keys, with an algorithm allow-list and claim checks."""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from campaign_service.adapters.auth.keys import KeySource
from campaign_service.domain.access import INVALID_TOKEN, Principal, principal_from_claims
from campaign_service.domain.errors import Unauthenticated


@dataclass(frozen=True)
class ClaimRules:
    algorithms: tuple[str, ...]
    audience: str
    issuer: str | None  # None: not checked
    leeway_s: float
    merchant_claim: str = "merchant_id"


class LocalJwtVerifier:
    def __init__(self, keys: KeySource, rules: ClaimRules) -> None:
        self._keys = keys
        self._rules = rules
        self._required = ["exp", "sub", "aud", *(["iss"] if rules.issuer is not None else [])]

    async def verify(self, token: str) -> Principal:
        # Reasons told to the caller are a fixed few; PyJWT's messages never leave this function.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._rules.algorithms or not (kid is None or isinstance(kid, str)):
            raise Unauthenticated(INVALID_TOKEN)
        key = await self._keys.find(kid)
        if key is None or (key.alg is not None and key.alg != alg):
            raise Unauthenticated(INVALID_TOKEN)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._rules.audience,
                issuer=self._rules.issuer,
                leeway=self._rules.leeway_s,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not yet valid") from None
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN) from None
        return principal_from_claims(claims, self._rules.merchant_claim)
