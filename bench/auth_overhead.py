"""What authentication costs per RPC, in-process: the auth interceptor's work on a token it has
verified before (the common case), and a first verification (ES256 signature + claims).

    .venv/bin/python -m bench.auth_overhead [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import grpc
from tests.tokens import AUDIENCE, ISSUER, SESSION_ISSUER, mint_token

from campaign_service.adapters.auth.cache import CachingVerifier
from campaign_service.adapters.auth.jwt_keys import FileKeys, parse_jwks
from campaign_service.adapters.auth.local import ClaimRules, LocalJwtVerifier
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.pb import campaign_pb2 as pb


class _Context:
    """The two ServicerContext methods the interceptor uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, *args: Any) -> None:
        raise RuntimeError(f"refused: {args}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        keys = FileKeys(SESSION_ISSUER.write_jwks(Path(tmp) / "jwks.json"), parse_jwks, "jwks")
    rules = ClaimRules(("ES256",), AUDIENCE, ISSUER, 30)
    local = LocalJwtVerifier(keys, rules)
    merchant = uuid.uuid4()
    tokens = [mint_token(merchant, ["tiers:read"], f"user{i}") for i in range(min(n, 2000))]

    start = time.perf_counter()
    for token in tokens:
        await local.verify(token)
    first = (time.perf_counter() - start) / len(tokens)

    async def noop(request: Any, ctx: Any) -> None:
        return None

    cache = CachingVerifier(local, 10_000, 300)
    guarded = AuthInterceptor(cache).wrap("GetVIPTier", noop)
    request = pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold")
    # a stand-in with the methods the interceptor calls, typed as what it stands for
    ctx = cast(
        "grpc.aio.ServicerContext[Any, Any]",
        _Context((("authorization", f"Bearer {tokens[0]}"), ("user-agent", "grpc-python"))),
    )
    await guarded(request, ctx)
    start = time.perf_counter()
    for _ in range(n):
        await guarded(request, ctx)
    cached = (time.perf_counter() - start) / n

    start = time.perf_counter()
    for _ in range(n):
        await noop(request, ctx)
    baseline = (time.perf_counter() - start) / n
    print(f"first verification (ES256, claims):      {first * 1e6:8.1f} us/token")
    print(f"auth interceptor, verified token cached: {(cached - baseline) * 1e6:8.1f} us/RPC")


if __name__ == "__main__":
    asyncio.run(main())
