"""Hostile input through the real server, driven by hypothesis: random and adversarial values in
every field of every RPC (huge strings, NUL bytes, bidi controls, SQL-looking text, negative and
huge numbers, many and large perks), raw bodies that are not valid protobuf, and invalid bytes
in metadata sent over a raw HTTP/2 connection. Never INTERNAL or UNKNOWN, never a changed row
on a rejected request, and the request size is bounded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Literal

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.tiers import MUTABLE_FIELDS
from tests.e2e.test_tier_api import gold
from tests.integration.test_schema import TENANT_TABLES
from tests.tokens import auth_channel, mint_token

# What a rejected request may answer. INTERNAL, UNKNOWN (and UNAVAILABLE from a crash) may not.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

NASTY = [
    "' OR 1=1 --",
    "'; DROP TABLE vip_tiers; --",
    "gold'); DELETE FROM outbox_events; --",
    "\x00",
    "gold\x00",
    "\u202egold",
    "\u2066ذهبي\u2069",
    "\u200f",
    "\ufeff",
    "%s%s%n",
    "${jndi:ldap://127.0.0.1/x}",
    "../../etc/passwd",
    "null",
    "٣٤٥",
    "a\r\nb",
    "e\u0301",
    "🏆" * 30,
    "A" * 70_000,
    "ذ" * 5_000,
    "",
    " ",
]
# Anything protobuf can carry in a string (lone surrogates cannot be encoded as UTF-8).
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
texts = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_categories=SURROGATES), max_size=300),
    st.builds(lambda s, n: s * n, st.sampled_from(["x", "\x00", "\u202e", "ع"]), st.integers(1, 20_000)),
)
int64s = st.one_of(st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, -(2**63), 2**63 - 1]), st.integers(-(2**63), 2**63 - 1))
int32s = st.integers(-(2**31), 2**31 - 1)
locales = st.one_of(st.sampled_from(["", "en", "ar", "he", "ar-SA", "he-IL", "zz", "en\n", "EN", "x" * 40]), texts)
perks = st.builds(
    pb.Perk,
    code=st.one_of(st.sampled_from(["gift", "a" * 64, "a" * 65]), texts),
    label=st.dictionaries(locales, texts, max_size=4),
)
benefits = st.builds(pb.Benefits, bonus_points=int64s, custom_perks=st.lists(perks, max_size=60))
tiers = st.builds(
    pb.VIPTier,
    tier_id=st.one_of(st.sampled_from(["gold", "silver", "new-tier"]), texts),
    merchant_id=st.one_of(st.just(""), texts),
    name=texts,
    locale=locales,
    min_points=int64s,
    discount_percentage=int32s,
    free_shipping=st.booleans(),
    exclusive_access=st.booleans(),
    benefits=benefits,
    translations=st.dictionaries(locales, texts, max_size=4),
    is_default=st.booleans(),
    version=int64s,
)
masks = st.lists(st.one_of(st.sampled_from([*MUTABLE_FIELDS, "*", "version", "id"]), texts), max_size=5)


async def fuzz(scenario: Callable[..., Coroutine[Any, Any, None]], **strategies: st.SearchStrategy[Any]) -> None:
    """Runs `scenario` for each example hypothesis draws. Hypothesis cannot drive a coroutine on a
    running loop, so it runs in a worker thread and hands each example to this loop."""
    loop = asyncio.get_running_loop()

    @FUZZ
    @given(**strategies)
    def run(**example: Any) -> None:
        asyncio.run_coroutine_threadsafe(scenario(**example), loop).result()

    await asyncio.to_thread(run)


class Target:
    """A merchant with two tiers, and the means to see whether anything of it changed."""

    # What requests may change; the outbox relay's bookkeeping (published_at, attempts) is not.
    COLUMNS: ClassVar[dict[str, str]] = {
        "outbox_events": "(t.event_id, t.topic, t.key, t.payload, t.headers, t.created_at)::text"
    }

    def __init__(self, merchant: uuid.UUID, superuser_conn: Any) -> None:
        self.merchant = merchant
        self.conn = superuser_conn

    async def snapshot(self) -> list[Any]:
        rows = []
        for table in TENANT_TABLES:
            row = self.COLUMNS.get(table, "t::text")
            rows.append(
                await self.conn.fetchval(
                    f"SELECT md5(coalesce(string_agg({row}, '|' ORDER BY {row}), '')) FROM {table} t"
                    " WHERE merchant_id = $1",
                    self.merchant,
                )
            )
        rows.append(await self.conn.fetchval("SELECT count(*) FROM merchants"))
        return rows


@pytest.fixture
async def target(stub: Any, new_merchant: Any, superuser_conn: Any) -> Target:
    merchant = await new_merchant()
    for tier in (gold(), gold(tier_id="silver", name="Silver", min_points=10, translations={})):
        await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=tier))
    return Target(merchant, superuser_conn)


def merchant_ids(target: Target) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(str(target.merchant)),
        st.just(str(target.merchant).upper()),
        st.just(str(uuid.uuid4())),
        texts,
    )


async def outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def check(stub: Any, method: str, request: Any, target: Target) -> grpc.StatusCode:
    """Calls; asserts an allowed code and, unless OK, that nothing in any tenant table changed."""
    before = await target.snapshot()
    code, details = await outcome(getattr(stub, method)(request, timeout=10))
    assert code in ALLOWED, f"{method}: {code} {details!r}"
    assert "Traceback" not in details
    assert "DELETE FROM" not in details
    if code is not grpc.StatusCode.OK:
        assert await target.snapshot() == before, f"{method} changed rows but answered {code}"
    return code


async def test_fuzz_reads(stub: Any, target: Target) -> None:
    requests = st.one_of(
        st.builds(pb.GetVIPTierRequest, merchant_id=merchant_ids(target), tier_id=texts, locale=locales),
        st.builds(pb.ListVIPTiersRequest, merchant_id=merchant_ids(target), locale=locales),
        st.builds(pb.EvaluateTierRequest, merchant_id=merchant_ids(target), points=int64s, locale=locales),
        st.builds(
            pb.GetCustomerTierRequest,
            merchant_id=merchant_ids(target),
            customer_id=st.one_of(st.just(str(uuid.uuid4())), texts),
            locale=locales,
        ),
    )

    async def run(request: Any) -> None:
        await check(stub, method_of(request), request, target)

    await fuzz(run, request=requests)


def method_of(request: Any) -> str:
    return {
        pb.GetVIPTierRequest: "GetVIPTier",
        pb.ListVIPTiersRequest: "ListVIPTiers",
        pb.EvaluateTierRequest: "EvaluateTier",
        pb.GetCustomerTierRequest: "GetCustomerTier",
        pb.CreateVIPTierRequest: "CreateVIPTier",
        pb.UpdateVIPTierRequest: "UpdateVIPTier",
        pb.DeleteVIPTierRequest: "DeleteVIPTier",
    }[type(request)]


async def test_fuzz_writes(stub: Any, target: Target) -> None:
    requests = st.one_of(
        st.builds(pb.CreateVIPTierRequest, merchant_id=merchant_ids(target), tier=tiers),
        st.builds(
            pb.UpdateVIPTierRequest,
            merchant_id=merchant_ids(target),
            tier_id=st.one_of(st.sampled_from(["gold", "silver"]), texts),
            tier=tiers,
            update_mask=st.builds(field_mask_pb2.FieldMask, paths=masks),
            expected_version=int64s,
        ),
        st.builds(
            pb.DeleteVIPTierRequest,
            merchant_id=merchant_ids(target),
            tier_id=st.one_of(st.sampled_from(["gold", "silver"]), texts),
            expected_version=st.one_of(st.just(-1), st.just(2**63 - 1), int64s),
        ),
    )
    seen: set[grpc.StatusCode] = set()

    async def run(request: Any) -> None:
        seen.add(await check(stub, method_of(request), request, target))

    await fuzz(run, request=requests)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen


async def test_fuzz_tokens_and_merchants(service: Any, target: Target) -> None:
    """Random claims and scopes: refusals change nothing, and no token reaches another merchant."""
    claims = st.fixed_dictionaries(
        {
            "merchant": st.one_of(st.none(), st.just(target.merchant), st.just(uuid.uuid4()), texts),
            "scopes": st.lists(
                st.one_of(st.sampled_from(["tiers:read", "tiers:write", "campaign:service"]), texts), max_size=3
            ),
            "subject": st.one_of(st.just("fuzzer"), texts),
            "ttl_s": st.sampled_from([-3600, -1, 60]),  # -1: expired, but within the 30 s leeway
        }
    )

    async def run(c: dict[str, Any], request: str) -> None:
        if isinstance(c["merchant"], str) and len(c["merchant"]) > 2000:
            c["merchant"] = c["merchant"][:2000]  # keep the token under the 8 KiB metadata limit
        c["subject"] = c["subject"][:2000]
        token = mint_token(c["merchant"], c["scopes"], c["subject"], ttl_s=c["ttl_s"])
        async with auth_channel(service.target, token) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            req = (
                pb.ListVIPTiersRequest(merchant_id=str(target.merchant))
                if request == "ListVIPTiers"
                else pb.DeleteVIPTierRequest(merchant_id=str(target.merchant), tier_id="nope")
            )
            code = await check(stub, request, req, target)
        may_read = c["merchant"] == target.merchant or "campaign:service" in c["scopes"]
        if code is grpc.StatusCode.OK or code is grpc.StatusCode.NOT_FOUND:
            assert c["ttl_s"] > -30  # CAMPAIGN_JWT_LEEWAY_S
            assert may_read
            assert c["subject"].isprintable()

    await fuzz(run, c=claims, request=st.sampled_from(["ListVIPTiers", "DeleteVIPTier"]))


async def test_raw_bodies_that_are_not_valid_messages(service: Any, target: Target) -> None:
    methods = [
        "GetVIPTier",
        "ListVIPTiers",
        "EvaluateTier",
        "GetCustomerTier",
        "CreateVIPTier",
        "UpdateVIPTier",
        "DeleteVIPTier",
    ]
    invalid_utf8 = b"\x0a\x04\xff\xfe\xfd\xfc"  # field 1 (merchant_id), a string that is not UTF-8
    deep_groups = b"\x9b\x06" * 200 + b"\x9c\x06" * 200  # field 99, groups nested 200 deep
    bodies = st.one_of(
        st.sampled_from([invalid_utf8, deep_groups, b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab"]),
        st.binary(max_size=512),
    )
    async with auth_channel(service.target) as channel:

        async def run(method: str, body: bytes) -> None:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/campaign.v1.CampaignService/{method}"
            )
            before = await target.snapshot()
            code, details = await outcome(call(body, timeout=10))
            assert code in ALLOWED, f"{method} {body[:40]!r}: {code} {details!r}"
            if code is not grpc.StatusCode.OK:
                assert await target.snapshot() == before

        await fuzz(run, method=st.sampled_from(methods), body=bodies)
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/campaign.v1.CampaignService/GetVIPTier"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(invalid_utf8)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request: not a valid protobuf message of the request type"


async def test_request_size_is_bounded(stub: Any, target: Target) -> None:
    """CAMPAIGN_GRPC_MAX_MESSAGE_BYTES (256 KiB by default) caps a request before any code runs."""
    before = await target.snapshot()
    huge = gold(tier_id="huge", name="H" * 300_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(target.merchant), tier=huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await target.snapshot() == before
    just_under = gold(tier_id="big", name="H" * 200_000)  # fits the limit; refused by validation
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(target.merchant), tier=just_under))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def raw_h2_call(port: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    """One gRPC call over a hand-driven HTTP/2 connection, so metadata can hold any bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/campaign.v1.CampaignService/ListVIPTiers"),
            (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *headers,
        ],
    )
    conn.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    result: dict[str, Any] = {}
    try:
        async with asyncio.timeout(10):
            while "end" not in result:
                data = await reader.read(65536)
                if not data:
                    result["end"] = "closed"
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        result.update({k.decode(): v.decode(errors="replace") for k, v in event.headers})
                    elif isinstance(
                        event, h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated
                    ):
                        result["end"] = type(event).__name__
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    return result


HOSTILE_METADATA = [
    [(b"authorization", b"Bearer \xff\xfe\xfd")],
    [(b"authorization", b"Bearer abc\x00def")],
    [(b"authorization", b"\xc3\x28")],
    [(b"authorization", b"Bearer " + b"\xe2\x80\xae" + b"a.b.c")],
    [(b"authorization", b"Bearer " + b"\xff" * 7000)],
    [(b"x-correlation-id", b"\xff\xfe"), (b"authorization", b"Bearer x")],
    [(b"x-correlation-id", b"' OR 1=1 --\x00"), (b"authorization", b"Bearer x")],
    [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")],
    [(b"authorization-bin", b"/w=="), (b"x-correlation-id-bin", b"AAEC")],
]
# Refused by grpc-core while parsing HTTP/2 headers, before any code of this service runs: core
# answers INTERNAL with its own parse message. Nothing reaches the service, nothing changes.
REFUSED_BY_GRPC_CORE = [
    (
        [(b"authorization-bin", b"!!not base64!!")],
        "Error parsing 'authorization-bin' metadata: illegal base64 encoding",
    ),
    ([(b"\xff\xfe", b"x")], "Illegal header key"),
]


async def assert_untouched_and_serving(service: Any, target: Target, before: list[Any]) -> None:
    assert await target.snapshot() == before
    async with auth_channel(service.target) as channel:
        got = await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(
            pb.ListVIPTiersRequest(merchant_id=str(target.merchant))
        )
    assert len(got.tiers) == 2


@pytest.mark.parametrize("metadata", HOSTILE_METADATA, ids=range(len(HOSTILE_METADATA)))
async def test_invalid_bytes_in_metadata(service: Any, target: Target, metadata: list[tuple[bytes, bytes]]) -> None:
    before = await target.snapshot()
    body = pb.ListVIPTiersRequest(merchant_id=str(target.merchant)).SerializeToString()
    result = await raw_h2_call(service.grpc_port, metadata, body)
    assert result.get("grpc-status") == "16", result  # UNAUTHENTICATED, with a reason of ours
    assert result["grpc-message"] in {
        "invalid token",
        "more than one authorization metadata entry",
        "missing bearer token (metadata `authorization: Bearer <token>`)",
    } or result["grpc-message"].startswith("malformed authorization metadata"), result
    await assert_untouched_and_serving(service, target, before)


@pytest.mark.parametrize(("metadata", "message"), REFUSED_BY_GRPC_CORE, ids=["bad base64", "bad key"])
async def test_metadata_grpc_core_refuses_before_the_service(
    service: Any, target: Target, metadata: list[tuple[bytes, bytes]], message: str
) -> None:
    before = await target.snapshot()
    body = pb.ListVIPTiersRequest(merchant_id=str(target.merchant)).SerializeToString()
    result = await raw_h2_call(service.grpc_port, metadata, body)
    assert (result.get("grpc-status"), result.get("grpc-message", "")[: len(message)]) == ("13", message), result
    await assert_untouched_and_serving(service, target, before)


async def test_raw_h2_client_reaches_the_service(service: Any, target: Target) -> None:
    """The raw HTTP/2 client above really speaks gRPC: a valid call succeeds through it."""
    body = pb.ListVIPTiersRequest(merchant_id=str(target.merchant)).SerializeToString()
    token = mint_token().encode()
    result = await raw_h2_call(service.grpc_port, [(b"authorization", b"Bearer " + token)], body)
    assert result.get("grpc-status") == "0", result


async def test_a_trailing_newline_is_not_part_of_a_valid_identifier(stub: Any, target: Target) -> None:
    """Regression: Python's `$` matches before a final newline; `gold\\n` passed as a tier id."""
    m = str(target.merchant)
    cases = [
        (stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=m, tier_id="gold\n")), "tier_id"),
        (stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=m, tier_id="gold", locale="en\n")), "locale"),
        (stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=m, tier=gold(tier_id="new\n"))), "tier.tier_id"),
        (
            stub.CreateVIPTier(
                pb.CreateVIPTierRequest(
                    merchant_id=m,
                    tier=gold(
                        tier_id="new", benefits=pb.Benefits(custom_perks=[pb.Perk(code="gift\n", label={"en": "Gift"})])
                    ),
                )
            ),
            "tier.benefits.custom_perks[0].code",
        ),
        (stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=m + "\n")), "merchant_id"),
    ]
    before = await target.snapshot()
    for call, field in cases:
        code, details = await outcome(call)
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert await target.snapshot() == before


async def test_correlation_id_with_a_newline_is_replaced_not_echoed(service: Any, target: Target) -> None:
    body = pb.ListVIPTiersRequest(merchant_id=str(target.merchant)).SerializeToString()
    token = mint_token().encode()
    result = await raw_h2_call(
        service.grpc_port, [(b"authorization", b"Bearer " + token), (b"x-correlation-id", b"abc\n")], body
    )
    assert result.get("grpc-status") == "0", result
    assert uuid.UUID(result["x-correlation-id"])  # a generated one, not the caller's
