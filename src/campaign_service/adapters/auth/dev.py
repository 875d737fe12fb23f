"""The embedded default's own key pair (in the data dir) and the short-lived tokens it mints.

Only for the embedded default: a production configuration never creates this key nor mints.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from campaign_service.adapters.auth.jwt_keys import KeySet, VerificationKey

DEV_ISSUER = "campaign-service-dev"
DEV_ALGORITHM = "ES256"
MAX_DEV_TTL_S = 12 * 3600
_KEY_FILE = Path("auth") / "dev-signing-key.pem"


def dev_signing_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """Loads the key pair, creating it on first use (readable by this user only)."""
    path = data_dir / _KEY_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        # link() fails if another process created the key first; then both use that one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return loaded


def dev_key_set(key: ec.EllipticCurvePrivateKey) -> KeySet:
    return KeySet([VerificationKey(key.public_key(), None, DEV_ALGORITHM)])


def token_claims(
    *, issuer: str, audience: str, merchant_id: UUID | str | None, scopes: Iterable[str], subject: str, ttl_s: int
) -> dict[str, object]:
    """The claims this service reads (see domain/access.py), valid from now for `ttl_s`."""
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "scope": " ".join(scopes),
    }
    if merchant_id is not None:
        claims["merchant_id"] = str(merchant_id)
    return claims


def mint_dev_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    audience: str,
    merchant_id: UUID | None,
    scopes: Iterable[str],
    subject: str,
    ttl_s: int,
) -> str:
    if not 0 < ttl_s <= MAX_DEV_TTL_S:
        raise ValueError(f"ttl must be 1..{MAX_DEV_TTL_S} seconds")
    claims = token_claims(
        issuer=DEV_ISSUER, audience=audience, merchant_id=merchant_id, scopes=scopes, subject=subject, ttl_s=ttl_s
    )
    return jwt.encode(claims, key, algorithm=DEV_ALGORITHM)
