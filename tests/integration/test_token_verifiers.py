"""Token verification with real keys: local JWKS/PEM/URL verification and its claim checks,
key rotation, the verified-token cache, and the Auth Service client against a real gRPC server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from campaign_service.adapters.auth import jwt_keys
from campaign_service.adapters.auth.auth_service import AuthServiceVerifier
from campaign_service.adapters.auth.cache import CachingVerifier
from campaign_service.adapters.auth.jwt_keys import FileKeys, UrlKeys, parse_jwks, parse_pem_public_key
from campaign_service.adapters.auth.local import ClaimRules, LocalJwtVerifier
from campaign_service.api.pb import auth_pb2
from campaign_service.domain.access import SCOPE_READ, SCOPE_WRITE, Principal
from campaign_service.service.errors import Unauthenticated, Unavailable
from tests.auth_server import auth_server, valid
from tests.tokens import AUDIENCE, ISSUER, TokenIssuer

RULES = ClaimRules(("ES256", "RS256", "PS256", "EdDSA"), AUDIENCE, ISSUER, leeway_s=30)
M = uuid.uuid4()


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
def verifier(issuer: TokenIssuer, tmp_path: Path) -> LocalJwtVerifier:
    return LocalJwtVerifier(FileKeys(issuer.write_jwks(tmp_path / "jwks.json"), parse_jwks, "jwks"), RULES)


async def test_valid_token_gives_its_principal(verifier: LocalJwtVerifier, issuer: TokenIssuer) -> None:
    p = await verifier.verify(issuer.mint(M, [SCOPE_READ, "unknown:scope"], "alice"))
    assert (p.subject, p.merchant_id, p.scopes) == ("alice", M, frozenset({SCOPE_READ}))
    assert p.expires_at == pytest.approx(time.time() + 900, abs=5)


def _hs256_with_public_key(issuer: TokenIssuer) -> str:
    # The classic algorithm-confusion attack: HMAC "signed" with the public key's PEM text.
    pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = json.loads(jwt.utils.base64url_decode(issuer.mint(M).split(".")[1]))
    header = json.dumps({"alg": "HS256", "kid": issuer.kid}).encode()
    signing_input = jwt.utils.base64url_encode(header) + b"." + jwt.utils.base64url_encode(json.dumps(body).encode())
    import hashlib
    import hmac

    sig = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(sig)).decode()


def _alg_none(issuer: TokenIssuer) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": issuer.kid}).encode())
    return (header + b"." + issuer.mint(M).split(".")[1].encode() + b".").decode()


BAD_TOKENS: dict[str, Callable[[TokenIssuer], tuple[str, str]]] = {
    "expired beyond leeway": lambda i: (i.mint(M, exp=int(time.time()) - 31), "token expired"),
    "not yet valid": lambda i: (i.mint(M, nbf=int(time.time()) + 120), "token not yet valid"),
    "wrong audience": lambda i: (i.mint(M, aud="points-service"), "invalid token"),
    "no audience": lambda i: (i.mint(M, aud=None), "invalid token"),
    "wrong issuer": lambda i: (i.mint(M, iss="evil"), "invalid token"),
    "no issuer": lambda i: (i.mint(M, iss=None), "invalid token"),
    "no expiry": lambda i: (i.mint(M, exp=None), "invalid token"),
    "no subject": lambda i: (i.mint(M, sub=None), "invalid token"),
    "other key, same kid": lambda i: (TokenIssuer(i.kid).mint(M), "invalid token"),
    "unknown kid": lambda i: (TokenIssuer().mint(M), "invalid token"),
    "alg none": lambda i: (_alg_none(i), "invalid token"),
    "HS256 with the public key": lambda i: (_hs256_with_public_key(i), "invalid token"),
    "tampered payload": lambda i: (
        (lambda t: t[0] + "." + TokenIssuer().mint(M, subject="root").split(".")[1] + "." + t[2])(i.mint(M).split(".")),
        "invalid token",
    ),
    "garbage": lambda i: ("not.a.jwt", "invalid token"),
    "bad merchant claim": lambda i: (i.mint(merchant="x' OR '1'='1"), "invalid token"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_bad_tokens_are_refused_with_a_fixed_reason(
    verifier: LocalJwtVerifier, issuer: TokenIssuer, case: str
) -> None:
    token, reason = BAD_TOKENS[case](issuer)
    with pytest.raises(Unauthenticated) as err:
        await verifier.verify(token)
    assert err.value.message == reason


async def test_expiry_within_leeway_is_accepted(verifier: LocalJwtVerifier, issuer: TokenIssuer) -> None:
    await verifier.verify(issuer.mint(M, exp=int(time.time()) - 5))


async def test_algorithm_outside_the_allow_list_is_refused(issuer: TokenIssuer, tmp_path: Path) -> None:
    rules = ClaimRules(("RS256",), AUDIENCE, ISSUER, 0)
    v = LocalJwtVerifier(FileKeys(issuer.write_jwks(tmp_path / "k.json"), parse_jwks, "jwks"), rules)
    with pytest.raises(Unauthenticated):
        await v.verify(issuer.mint(M))


def _jwks_file(path: Path, jwk: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": [{"kid": "k1", "kty": "oct", "k": "c2VjcmV0"}, jwk]}))
    return path


async def test_rsa_pss_and_eddsa_keys_from_a_jwks(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_jwk = {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r"}
    ed_jwk = {**json.loads(OKPAlgorithm.to_jwk(ed_key.public_key())), "kid": "e"}
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps(
            {"keys": [rsa_jwk, ed_jwk, {"kty": "oct", "k": jwt.utils.base64url_encode(b"s" * 32).decode(), "kid": "h"}]}
        )
    )
    v = LocalJwtVerifier(FileKeys(path, parse_jwks, "jwks"), RULES)
    claims = {"sub": "s", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60, "scope": SCOPE_WRITE}
    for key, alg, kid in ((rsa_key, "RS256", "r"), (rsa_key, "PS256", "r"), (ed_key, "EdDSA", "e")):
        assert (await v.verify(jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}))).subject == "s"
    with pytest.raises(Unauthenticated):  # an HMAC key in the JWKS is never used
        await v.verify(jwt.encode(claims, b"s" * 32, algorithm="HS256", headers={"kid": "h"}))


async def test_jwk_alg_pins_the_token_algorithm(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r", "alg": "PS256"}
    v = LocalJwtVerifier(FileKeys(_jwks_file(tmp_path / "j.json", jwk), parse_jwks, "jwks"), RULES)
    claims = {"sub": "s", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    await v.verify(jwt.encode(claims, rsa_key, algorithm="PS256", headers={"kid": "r"}))
    with pytest.raises(Unauthenticated):
        await v.verify(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r"}))


async def test_pem_public_key_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    v = LocalJwtVerifier(FileKeys(path, parse_pem_public_key, "public_key"), RULES)
    claims = {"sub": "s", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    assert (await v.verify(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "any"}))).subject == "s"
    with pytest.raises(Unauthenticated):
        await v.verify(jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))


async def test_rotated_jwks_file_is_picked_up_and_forgets_verified_tokens(tmp_path: Path) -> None:
    old, new = TokenIssuer(), TokenIssuer()
    path = old.write_jwks(tmp_path / "jwks.json")
    keys = FileKeys(path, parse_jwks, "jwks")
    cache = CachingVerifier(LocalJwtVerifier(keys, RULES), 100, 300)
    keys.subscribe(cache.clear)
    old_token = old.mint(M)
    await cache.verify(old_token)
    assert len(cache) == 1
    path.write_text("{ half-written")
    assert not keys.reload_if_changed()  # broken file: the old keys stay
    await cache.verify(old_token)
    new.write_jwks(path)
    assert keys.reload_if_changed()
    assert len(cache) == 0
    await cache.verify(new.mint(M))
    with pytest.raises(Unauthenticated):
        await cache.verify(old_token)


async def test_file_keys_poll_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_keys, "FILE_POLL_S", 0.01)
    old, new = TokenIssuer(), TokenIssuer()
    path = old.write_jwks(tmp_path / "jwks.json")
    keys = FileKeys(path, parse_jwks, "jwks")
    changed = asyncio.Event()
    keys.subscribe(changed.set)
    task = asyncio.create_task(keys.run())
    try:
        new.write_jwks(path)
        await asyncio.wait_for(changed.wait(), 10)
        assert await keys.find(new.kid) is not None
    finally:
        task.cancel()


class JwksServer:
    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.status = 200

    async def handle(self, _: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.jwks, status=self.status)


@pytest.fixture
async def jwks_server() -> Any:
    state = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield state, f"http://127.0.0.1:{port}/.well-known/jwks.json"
    await runner.cleanup()


async def test_jwks_url_fetch_and_bounded_refetch_on_unknown_kid(jwks_server: Any) -> None:
    state, url = jwks_server
    first, second = TokenIssuer(), TokenIssuer()
    state.jwks = first.jwks()
    keys = UrlKeys(url, refresh_s=300, timeout_s=2)
    try:
        v = LocalJwtVerifier(keys, RULES)
        assert (await v.verify(first.mint(M))).merchant_id == M
        assert state.hits == 1
        state.jwks = {"keys": [first.jwk(), second.jwk()]}
        for _ in range(5):  # unknown kids within 30 s: at most one more fetch
            with pytest.raises(Unauthenticated):
                await v.verify(TokenIssuer().mint(M))
        assert state.hits == 1
        keys._fetched_at -= jwt_keys.UNKNOWN_KID_REFETCH_S  # the refetch interval has passed
        assert (await v.verify(second.mint(M))).merchant_id == M  # rotation: new kid found by one refetch
        assert state.hits == 2
    finally:
        await keys.close()


async def test_jwks_url_down_means_unavailable_not_unauthenticated(jwks_server: Any) -> None:
    state, url = jwks_server
    state.status = 503
    keys = UrlKeys(url, refresh_s=300, timeout_s=2)
    try:
        assert not await keys.fetch()
        with pytest.raises(Unavailable):
            await LocalJwtVerifier(keys, RULES).verify(TokenIssuer().mint(M))
    finally:
        await keys.close()


class Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    async def verify(self, token: str) -> Principal:
        self.calls += 1
        await asyncio.sleep(0.01)
        return await self.inner.verify(token)  # type: ignore[no-any-return]


async def test_cache_remembers_positives_only_until_expiry_and_is_bounded(
    verifier: LocalJwtVerifier, issuer: TokenIssuer
) -> None:
    now = [time.time()]
    counting = Counting(verifier)
    cache = CachingVerifier(counting, max_entries=2, max_ttl_s=300, clock=lambda: now[0])
    short = issuer.mint(M, ttl_s=60)
    await cache.verify(short)
    await cache.verify(short)
    assert counting.calls == 1
    now[0] += 61  # past the token's expiry on the cache's clock: verified again
    await cache.verify(short)
    assert counting.calls == 2
    bad = issuer.mint(M, aud="other")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await cache.verify(bad)
    assert counting.calls == 4  # refusals are not cached
    a, b, c = (issuer.mint(M, subject=s) for s in "abc")
    for t in (a, b, c):
        await cache.verify(t)
    assert len(cache) == 2  # bounded: the least recently used (short, a) are gone
    calls = counting.calls
    await cache.verify(a)
    assert counting.calls == calls + 1


async def test_cache_caps_lifetime_at_max_ttl(verifier: LocalJwtVerifier, issuer: TokenIssuer) -> None:
    now = [time.time()]
    counting = Counting(verifier)
    cache = CachingVerifier(counting, max_entries=10, max_ttl_s=10, clock=lambda: now[0])
    token = issuer.mint(M, ttl_s=600)
    await cache.verify(token)
    now[0] += 11
    await cache.verify(token)
    assert counting.calls == 2


async def test_concurrent_requests_with_one_new_token_verify_it_once(
    verifier: LocalJwtVerifier, issuer: TokenIssuer
) -> None:
    counting = Counting(verifier)
    cache = CachingVerifier(counting, 10, 300)
    token = issuer.mint(M)
    results = await asyncio.gather(*(cache.verify(token) for _ in range(20)))
    assert counting.calls == 1
    assert {r.subject for r in results} == {"test-admin"}


async def test_auth_service_answers_map_to_principals_and_reasons() -> None:
    async with auth_server() as auth, grpc.aio.insecure_channel(auth.target) as channel:
        auth.servicer.tokens["good"] = valid("alice", M, [SCOPE_READ])
        auth.servicer.tokens["expired"] = auth_pb2.ValidateTokenResponse(
            valid=False, reason=auth_pb2.INVALID_REASON_EXPIRED
        )
        auth.servicer.tokens["revoked"] = auth_pb2.ValidateTokenResponse(
            valid=False, reason=auth_pb2.INVALID_REASON_REVOKED
        )
        auth.servicer.tokens["past"] = valid("alice", M, [SCOPE_READ], ttl_s=-1)
        auth.servicer.tokens["no-expiry"] = auth_pb2.ValidateTokenResponse(valid=True, subject="a")
        auth.servicer.tokens["bad-subject"] = valid("a\x00b", M, [SCOPE_READ])
        auth.servicer.tokens["bad-merchant"] = valid("a", None, [SCOPE_READ])
        auth.servicer.tokens["bad-merchant"].merchant_id = "not-a-uuid"
        v = AuthServiceVerifier(channel, AUDIENCE, timeout_s=2)
        p = await v.verify("good")
        assert (p.subject, p.merchant_id, p.scopes) == ("alice", M, frozenset({SCOPE_READ}))
        assert auth.servicer.calls[-1].audience == AUDIENCE
        for token, reason in [
            ("expired", "token expired"),
            ("revoked", "token revoked"),
            ("past", "token expired"),
            ("no-expiry", "token expired"),
            ("bad-subject", "invalid token"),
            ("bad-merchant", "invalid token"),
            ("unknown", "invalid token"),
        ]:
            with pytest.raises(Unauthenticated) as err:
                await v.verify(token)
            assert err.value.message == reason, token


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.INVALID_ARGUMENT, Unauthenticated),
        (grpc.StatusCode.INTERNAL, Unavailable),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Unavailable),
    ],
)
async def test_auth_service_error_statuses(code: grpc.StatusCode, error: type[Exception]) -> None:
    async with auth_server() as auth, grpc.aio.insecure_channel(auth.target) as channel:
        auth.servicer.fail_with = code
        with pytest.raises(error):
            await AuthServiceVerifier(channel, AUDIENCE, timeout_s=2).verify("t")


async def test_auth_service_slow_or_down_fails_closed() -> None:
    async with auth_server() as auth, grpc.aio.insecure_channel(auth.target) as channel:
        auth.servicer.tokens["good"] = valid("alice", M, [SCOPE_READ])
        auth.servicer.delay_s = 1.0
        with pytest.raises(Unavailable, match="authentication service is unavailable"):
            await AuthServiceVerifier(channel, AUDIENCE, timeout_s=0.1).verify("good")
        target = auth.target
    async with grpc.aio.insecure_channel(target) as channel:  # the server is gone now
        with pytest.raises(Unavailable):
            await AuthServiceVerifier(channel, AUDIENCE, timeout_s=1).verify("good")


async def test_auth_service_results_are_cached_until_expiry() -> None:
    async with auth_server() as auth, grpc.aio.insecure_channel(auth.target) as channel:
        auth.servicer.tokens["good"] = valid("alice", M, [SCOPE_READ], ttl_s=30)
        now = [time.time()]
        cache = CachingVerifier(AuthServiceVerifier(channel, AUDIENCE, 2), 100, 300, clock=lambda: now[0])
        for _ in range(5):
            await cache.verify("good")
        assert len(auth.servicer.calls) == 1
        now[0] += 31
        await cache.verify("good")
        assert len(auth.servicer.calls) == 2
        for _ in range(3):
            with pytest.raises(Unauthenticated):
                await cache.verify("bad")
        assert len(auth.servicer.calls) == 5


async def test_auth_service_max_cache_seconds_bounds_the_cache() -> None:
    """auth.v1 `max_cache_seconds`: an upper bound on reuse (0: never reused); unset, the
    service's own bound applies, as with an Auth Service that predates the field."""
    async with auth_server() as auth, grpc.aio.insecure_channel(auth.target) as channel:
        auth.servicer.tokens["short"] = valid("alice", M, [SCOPE_READ], ttl_s=600, max_cache_seconds=5)
        auth.servicer.tokens["never"] = valid("bob", M, [SCOPE_READ], ttl_s=600, max_cache_seconds=0)
        auth.servicer.tokens["long"] = valid("carol", M, [SCOPE_READ], ttl_s=600, max_cache_seconds=3600)
        auth.servicer.tokens["plain"] = valid("dave", M, [SCOPE_READ], ttl_s=600)
        now = [time.time()]
        cache = CachingVerifier(AuthServiceVerifier(channel, AUDIENCE, 2), 100, 60, clock=lambda: now[0])

        def calls(token: str) -> int:
            return sum(1 for c in auth.servicer.calls if c.token == token)

        for token in ("short", "never", "long", "plain"):
            await cache.verify(token)
            await cache.verify(token)
        assert (calls("short"), calls("never"), calls("long"), calls("plain")) == (1, 2, 1, 1)
        now[0] += 6  # past max_cache_seconds of "short", within the service's 60 s bound
        for token in ("short", "long", "plain"):
            await cache.verify(token)
        assert (calls("short"), calls("long"), calls("plain")) == (2, 1, 1)
        now[0] += 60  # past the service's bound: a longer max_cache_seconds does not extend it
        await cache.verify("long")
        assert calls("long") == 2
