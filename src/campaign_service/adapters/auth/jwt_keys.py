"""Public keys that tokens are checked against: a JWKS or PEM file (re-read when it changes),
a JWKS URL (refreshed periodically, and early on an unknown key id), or a fixed key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives import serialization

from campaign_service import metrics
from campaign_service.service.errors import Unavailable

log = structlog.get_logger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
FILE_POLL_S = 1.0
UNKNOWN_KID_REFETCH_S = 30.0


@dataclass(frozen=True)
class VerificationKey:
    key: Any  # a cryptography public key object
    kid: str | None
    alg: str | None  # the JWK's `alg` when it names one: tokens must then use exactly it


class KeySet:
    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        if not keys:
            raise ValueError("no usable signature keys")
        self.keys = tuple(keys)
        self._by_kid = {k.kid: k for k in keys if k.kid is not None}

    def find(self, kid: str | None) -> VerificationKey | None:
        """The key a token names by `kid`; a lone key also answers tokens without a (known) kid."""
        if kid is not None and kid in self._by_kid:
            return self._by_kid[kid]
        if len(self.keys) == 1 and (kid is None or self.keys[0].kid is None):
            return self.keys[0]
        return None


def _public(key: Any) -> Any:
    # A JWKS may carry private parameters by mistake; verification only ever needs the public half.
    return key.public_key() if hasattr(key, "public_key") else key


def parse_jwks(data: bytes) -> KeySet:
    """Signature keys of a JWKS document; keys for encryption or of unknown types are skipped."""
    doc = json.loads(data)
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document (no `keys` list)")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        kid = kid if isinstance(kid, str) else None
        keys.append(VerificationKey(_public(jwk.key), kid, alg if isinstance(alg, str) else None))
    return KeySet(keys)


def parse_pem_public_key(data: bytes) -> KeySet:
    return KeySet([VerificationKey(serialization.load_pem_public_key(data), None, None)])


class KeySource(Protocol):
    async def find(self, kid: str | None) -> VerificationKey | None: ...

    async def run(self) -> None:
        """Keeps the keys current until cancelled (returns at once when there is nothing to do)."""


class _Notifying:
    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener` is called whenever the key set changes (e.g. to forget verified tokens)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()


class StaticKeys(_Notifying):
    def __init__(self, keys: KeySet) -> None:
        super().__init__()
        self._keys = keys

    async def find(self, kid: str | None) -> VerificationKey | None:
        return self._keys.find(kid)

    async def run(self) -> None:
        return None


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileKeys(_Notifying):
    """Keys from a file, polled once a second; a file that fails to parse keeps the old keys."""

    def __init__(self, path: Path, parse: Callable[[bytes], KeySet], kind: str) -> None:
        super().__init__()
        self._path, self._parse, self._kind = path, parse, kind
        self._stamp = _stamp(path)
        self._keys = parse(path.read_bytes())

    async def find(self, kid: str | None) -> VerificationKey | None:
        return self._keys.find(kid)

    def reload_if_changed(self) -> bool:
        try:
            stamp = _stamp(self._path)
            if stamp == self._stamp:
                return False
            keys = self._parse(self._path.read_bytes())
        except (OSError, ValueError) as exc:
            metrics.KEY_RELOADS.labels(self._kind, "error").inc()
            log.warning("key file not reloaded; keeping the previous keys", kind=self._kind, error=type(exc).__name__)
            return False
        self._stamp, self._keys = stamp, keys
        metrics.KEY_RELOADS.labels(self._kind, "ok").inc()
        log.info("key file reloaded", kind=self._kind, keys=len(keys.keys))
        self._changed()
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_S)
            self.reload_if_changed()


class UrlKeys(_Notifying):
    """A JWKS served over HTTP(S): fetched every `refresh_s`, and at most once per
    UNKNOWN_KID_REFETCH_S when a token names a key id it does not know (key rotation)."""

    def __init__(self, url: str, refresh_s: float, timeout_s: float) -> None:
        super().__init__()
        self._url, self._refresh_s = url, refresh_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: KeySet | None = None
        self._body = b""
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def find(self, kid: str | None) -> VerificationKey | None:
        found = self._keys.find(kid) if self._keys is not None else None
        if found is None and time.monotonic() - self._fetched_at >= UNKNOWN_KID_REFETCH_S:
            await self.fetch()
            found = self._keys.find(kid) if self._keys is not None else None
        if self._keys is None:
            raise Unavailable("the token signing keys are unavailable")
        return found

    async def fetch(self) -> bool:
        """One bounded fetch (concurrent callers share it); False when it failed."""
        started = time.monotonic()
        async with self._lock:
            if self._fetched_at >= started:
                return True  # someone else fetched while we waited
            self._fetched_at = time.monotonic()
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=self._timeout)
                async with self._session.get(self._url) as resp:
                    resp.raise_for_status()
                    body = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS larger than 1 MiB")
                keys = parse_jwks(body)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                metrics.JWKS_FETCHES.labels("error").inc()
                log.warning("JWKS fetch failed", error=type(exc).__name__)
                return False
            metrics.JWKS_FETCHES.labels("ok").inc()
            changed = self._keys is not None and body != self._body
            self._keys, self._body = keys, body
        if changed:
            self._changed()
        return True

    async def run(self) -> None:
        while True:
            # Until the first success, retry sooner (still bounded by the refetch interval).
            await asyncio.sleep(self._refresh_s if self._keys is not None else UNKNOWN_KID_REFETCH_S / 6)
            await self.fetch()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
