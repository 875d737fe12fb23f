"""Verifies JWTs in-process against public keys, with an algorithm allow-list and claim checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from campaign_service.adapters.auth.jwt_keys import KeySource
from campaign_service.adapters.auth.principals import principal_from_claims
from campaign_service.domain.access import INVALID_TOKEN, Principal
from campaign_service.logs import caller_input_warning
from campaign_service.service.errors import Unauthenticated

_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}


def fits(alg: str, key: Any) -> bool:
    """Whether `key` is of the type (and curve) that algorithm `alg` verifies with. PyJWT checks
    this by failing in ways of its own (a TypeError "Expecting a PEM-formatted key" for an ES256
    header against an RSA key), so it is decided here first."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


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
        if not fits(alg, key.key):
            caller_input_warning(
                "token_alg_key_mismatch",
                "token algorithm does not fit the key",
                alg=alg,
                key_type=type(key.key).__name__,
            )
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
