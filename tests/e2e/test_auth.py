"""Authentication and tenant authorization through the real service process: every
CampaignService RPC needs a valid token for the request's merchant; health and reflection stay
open; the token's subject is the actor of changes; tokens never reach the logs."""

from __future__ import annotations

import re
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_ADMIN, SCOPE_READ, SCOPE_SERVICE, SCOPE_WRITE
from tests.auth_server import auth_server, valid
from tests.conftest import start_service
from tests.tokens import TokenIssuer, auth_channel, mint_token


def requests(merchant: uuid.UUID) -> dict[str, Any]:
    m = str(merchant)
    return {
        "GetVIPTier": pb.GetVIPTierRequest(merchant_id=m, tier_id="gold"),
        "ListVIPTiers": pb.ListVIPTiersRequest(merchant_id=m),
        "EvaluateTier": pb.EvaluateTierRequest(merchant_id=m, points=10),
        "GetCustomerTier": pb.GetCustomerTierRequest(merchant_id=m, customer_id=str(uuid.uuid4())),
        "CreateVIPTier": pb.CreateVIPTierRequest(merchant_id=m, tier=pb.VIPTier(tier_id="t", name="T")),
        "UpdateVIPTier": pb.UpdateVIPTierRequest(
            merchant_id=m,
            tier_id="gold",
            tier=pb.VIPTier(name="G"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        "DeleteVIPTier": pb.DeleteVIPTierRequest(merchant_id=m, tier_id="gold"),
    }


METHODS = list(requests(uuid.uuid4()))
WRITES = ["CreateVIPTier", "UpdateVIPTier", "DeleteVIPTier"]
READS = [m for m in METHODS if m not in WRITES]


async def code_of(
    stub: campaign_grpc.CampaignServiceAsyncStub, method: str, request: Any, **kw: Any
) -> tuple[Any, str]:
    try:
        await getattr(stub, method)(request, **kw)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def state(superuser_conn: Any, merchant: uuid.UUID) -> tuple[Any, ...]:
    tiers = await superuser_conn.fetch("SELECT * FROM vip_tiers WHERE merchant_id = $1 ORDER BY tier_id", merchant)
    outbox = await superuser_conn.fetchval("SELECT count(*) FROM outbox_events WHERE merchant_id = $1", merchant)
    return tuple(tuple(r.values()) for r in tiers), outbox


async def seed(stub: Any, merchant: uuid.UUID) -> None:
    await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=pb.VIPTier(tier_id="gold", name="Gold"))
    )


@pytest.mark.parametrize("method", METHODS)
async def test_no_token_is_unauthenticated(anonymous_stub: Any, new_merchant: Any, method: str) -> None:
    merchant = await new_merchant()
    code, details = await code_of(anonymous_stub, method, requests(merchant)[method])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in details


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda m: mint_token(m, [SCOPE_WRITE], ttl_s=-120), "token expired"),
        (lambda m: TokenIssuer().mint(m, [SCOPE_WRITE]), "invalid token"),
        (lambda m: mint_token(m, [SCOPE_WRITE], aud="someone-else"), "invalid token"),
        (lambda m: mint_token(m, [SCOPE_WRITE])[:-4] + "AAAA", "invalid token"),
        (lambda m: "x" * 100, "invalid token"),
    ],
)
async def test_invalid_tokens_are_unauthenticated_with_a_plain_reason(
    stub_for: Any, new_merchant: Any, token: Any, reason: str
) -> None:
    merchant = await new_merchant()
    code, details = await code_of(stub_for(token=token(merchant)), "ListVIPTiers", requests(merchant)["ListVIPTiers"])
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_malformed_authorization_metadata(service: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        request = requests(merchant)["ListVIPTiers"]
        for metadata in [
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("authorization", "Bearer"),),
            (("authorization", f"Bearer {mint_token()}"), ("authorization", f"Bearer {mint_token()}")),
        ]:
            code, _ = await code_of(stub, "ListVIPTiers", request, metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", METHODS)
async def test_token_of_another_merchant_is_denied(
    stub_for: Any, new_merchant: Any, superuser_conn: Any, stub: Any, method: str
) -> None:
    mine, theirs = await new_merchant(), await new_merchant()
    await seed(stub, theirs)
    before = await state(superuser_conn, theirs)
    code, details = await code_of(stub_for(mine, [SCOPE_READ, SCOPE_WRITE]), method, requests(theirs)[method])
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "the token is not valid for this merchant")
    assert await state(superuser_conn, theirs) == before


@pytest.mark.parametrize("method", WRITES)
async def test_read_scope_cannot_write(
    stub_for: Any, new_merchant: Any, superuser_conn: Any, stub: Any, method: str
) -> None:
    merchant = await new_merchant()
    await seed(stub, merchant)
    before = await state(superuser_conn, merchant)
    code, details = await code_of(stub_for(merchant, [SCOPE_READ]), method, requests(merchant)[method])
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "the token lacks the tiers:write scope")
    assert await state(superuser_conn, merchant) == before


async def test_merchant_token_reads_and_writes_its_own_merchant(stub_for: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    writer, reader = stub_for(merchant, [SCOPE_WRITE]), stub_for(merchant, [SCOPE_READ])
    await seed(writer, merchant)
    got = await reader.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant).upper(), tier_id="gold"))
    assert got.name == "Gold"
    code, _ = await code_of(stub_for(merchant, []), "GetVIPTier", requests(merchant)["GetVIPTier"])
    assert code == grpc.StatusCode.PERMISSION_DENIED  # a token without any scope reads nothing


async def test_service_scope_reads_any_merchant_but_cannot_write(stub_for: Any, new_merchant: Any, stub: Any) -> None:
    merchant = await new_merchant()
    await seed(stub, merchant)
    svc = stub_for(None, [SCOPE_SERVICE], subject="points-service")
    for method in READS:
        code, _ = await code_of(svc, method, requests(merchant)[method])
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), method
    for method in WRITES:
        code, _ = await code_of(svc, method, requests(merchant)[method])
        assert code == grpc.StatusCode.PERMISSION_DENIED, method


async def test_malformed_merchant_id_is_invalid_argument_before_any_data_access(
    stub_for: Any, new_merchant: Any
) -> None:
    merchant = await new_merchant()
    for who in (stub_for(merchant, [SCOPE_WRITE]), stub_for(None, [SCOPE_ADMIN])):
        code, details = await code_of(who, "ListVIPTiers", pb.ListVIPTiersRequest(merchant_id="' OR 1=1 --"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("merchant_id:")


async def test_the_token_subject_is_the_actor_of_changes(stub_for: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    alice = stub_for(merchant, [SCOPE_WRITE], subject="alice@merchant")
    await seed(alice, merchant)
    await stub_for(None, [SCOPE_ADMIN], subject="ops-bob").UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant),
            tier_id="gold",
            tier=pb.VIPTier(name="Golden"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    rows = await superuser_conn.fetch(
        "SELECT payload->>'actor' AS actor, payload->'updated_fields' AS fields FROM outbox_events"
        " WHERE merchant_id = $1 ORDER BY created_at",
        merchant,
    )
    assert [r["actor"] for r in rows] == ["alice@merchant", "ops-bob"]
    assert rows[1]["fields"] == ["name"]


async def test_health_and_reflection_need_no_token(service: Any) -> None:
    async with grpc.aio.insecure_channel(service.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert "campaign.v1.CampaignService" in names


async def test_correlation_id_is_echoed_even_when_refused(anonymous_stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    call = anonymous_stub.ListVIPTiers(requests(merchant)["ListVIPTiers"], metadata=(("x-correlation-id", "c-123"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert ("x-correlation-id", "c-123") in tuple(await call.trailing_metadata())


JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


async def test_logs_never_contain_a_token(service: Any, stub_for: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    tokens = [
        mint_token(merchant, [SCOPE_READ]),
        mint_token(merchant, [SCOPE_READ], ttl_s=-100),
        TokenIssuer().mint(merchant),
    ]
    for token in tokens:
        await code_of(stub_for(token=token), "ListVIPTiers", requests(merchant)["ListVIPTiers"])
        await code_of(
            stub_for(token=token), "GetVIPTier", pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="BAD\x00")
        )
    logs = service.logs()
    assert "rpc" in logs or "serving" in logs  # the service does log (debug level)
    for token in tokens:
        assert token not in logs
        assert token.split(".")[1] not in logs
    assert not JWT_LIKE.search(logs)
    assert not re.search(r"(?i)bearer\s+[A-Za-z0-9]", logs)


async def test_auth_service_mode_end_to_end(
    database: Any, tmp_path: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    async with auth_server() as auth:
        auth.servicer.tokens["opaque-alice"] = valid("alice", merchant, [SCOPE_WRITE])
        auth.servicer.tokens["opaque-other"] = valid("mallory", uuid.uuid4(), [SCOPE_WRITE])
        svc = start_service(
            database,
            tmp_path,
            {"AUTH_HOST": auth.target, "CAMPAIGN_JWT_JWKS_FILE": None, "CAMPAIGN_JWT_ISSUER": None},
        )
        try:
            async with (
                auth_channel(svc.target, "opaque-alice") as ch,
                auth_channel(svc.target, "opaque-other") as other,
            ):
                alice = campaign_grpc.CampaignServiceStub(ch)
                await seed(alice, merchant)
                for _ in range(3):
                    await alice.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
                assert [c.token for c in auth.servicer.calls] == ["opaque-alice"]  # cached after the first call
                assert auth.servicer.calls[0].audience == "campaign-service"
                code, _ = await code_of(
                    campaign_grpc.CampaignServiceStub(other), "ListVIPTiers", requests(merchant)["ListVIPTiers"]
                )
                assert code == grpc.StatusCode.PERMISSION_DENIED
                actor = await superuser_conn.fetchval(
                    "SELECT payload->>'actor' FROM outbox_events WHERE merchant_id = $1", merchant
                )
                assert actor == "alice"
                async with auth_channel(svc.target, "never-seen") as unknown:
                    code, details = await code_of(
                        campaign_grpc.CampaignServiceStub(unknown), "ListVIPTiers", requests(merchant)["ListVIPTiers"]
                    )
                assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
                await auth.server.stop(0)  # the Auth Service goes down
                async with auth_channel(svc.target, "opaque-new") as new:
                    code, details = await code_of(
                        campaign_grpc.CampaignServiceStub(new), "ListVIPTiers", requests(merchant)["ListVIPTiers"]
                    )
                assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the authentication service is unavailable")
                # a token verified before the outage keeps working until its cache entry runs out
                await alice.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
        finally:
            svc.stop()
