"""Every CampaignService RPC end to end through a real service process on the real database."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb


def gold(**overrides: Any) -> pb.VIPTier:
    fields: dict[str, Any] = {
        "tier_id": "gold",
        "name": "Gold",
        "locale": "en",
        "min_points": 1000,
        "discount_percentage": 10,
        "free_shipping": True,
        "benefits": pb.Benefits(
            bonus_points=100,
            custom_perks=[
                pb.Perk(code="lounge", label={"en": "Lounge access", "ar": "دخول الصالة", "he": "כניסה לטרקלין"})
            ],
        ),
        "translations": {"ar": "ذهبي", "he": "זהב"},
    }
    fields.update(overrides)
    return pb.VIPTier(**fields)


async def create(
    stub: campaign_grpc.CampaignServiceAsyncStub, merchant: uuid.UUID, tier: pb.VIPTier | None = None
) -> pb.VIPTier:
    return await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=tier or gold()))


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    out = []
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        assert detail.Unpack(br)
        out += [v.field for v in br.field_violations]
    return out


async def outbox_count(superuser_conn: Any, merchant: uuid.UUID) -> int:
    return int(await superuser_conn.fetchval("SELECT count(*) FROM outbox_events WHERE merchant_id = $1", merchant))


async def test_create_get_list_round_trip(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    created = await create(stub, merchant)
    assert created.version == 1
    assert created.id
    assert created.merchant_id == str(merchant)
    assert created.created_at.seconds > 0
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
    assert got.name == "Gold"
    assert got.min_points == 1000
    assert got.discount_percentage == 10
    assert got.free_shipping
    assert not got.exclusive_access
    assert got.benefits.bonus_points == 100
    assert got.benefits.custom_perks[0].code == "lounge"
    assert dict(got.translations) == {"ar": "ذهبي", "he": "זהב"}
    await create(stub, merchant, gold(tier_id="silver", name="Silver", min_points=100, translations={}))
    await create(stub, merchant, gold(tier_id="platinum", name="Platinum", min_points=5000, translations={}))
    listed = await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
    assert [t.tier_id for t in listed.tiers] == ["silver", "gold", "platinum"]


@pytest.mark.parametrize(
    ("requested", "locale", "name", "perk"),
    [
        ("", "en", "Gold", "Lounge access"),
        ("en", "en", "Gold", "Lounge access"),
        ("ar", "ar", "ذهبي", "دخول الصالة"),
        ("ar-SA", "ar", "ذهبي", "دخول الصالة"),
        ("he", "he", "זהב", "כניסה לטרקלין"),
        ("he-IL", "he", "זהב", "כניסה לטרקלין"),
        ("fr-FR", "en", "Gold", "Lounge access"),
    ],
)
async def test_locale_fallback_on_get(
    stub: Any, new_merchant: Any, requested: str, locale: str, name: str, perk: str
) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale=requested))
    assert (got.resolved_locale, got.display_name, got.display_perks[0].label) == (locale, name, perk)


async def test_locale_fallback_to_tier_default_then_en(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    # Hebrew-default tier with only an English translation: ar -> he (tier default)
    tier = gold(name="זהב", locale="he", translations={"en": "Gold"})
    await create(stub, merchant, tier)
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale="ar"))
    assert (got.resolved_locale, got.display_name) == ("he", "זהב")
    listed = await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant), locale="en-GB"))
    assert (listed.tiers[0].resolved_locale, listed.tiers[0].display_name) == ("en", "Gold")


async def test_malformed_locale_is_invalid(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    err = await rpc_error(
        stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale="ar_SA!"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == ["locale"]


async def test_update_with_mask_changes_only_masked_fields_and_bumps_version(
    stub: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    before = await outbox_count(superuser_conn, merchant)
    resp = await stub.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant),
            tier_id="gold",
            tier=pb.VIPTier(name="Gold+", min_points=1, discount_percentage=50),
            update_mask=field_mask_pb2.FieldMask(paths=["discount_percentage"]),
            expected_version=1,
        )
    )
    assert resp.success
    assert resp.version == 2
    assert list(resp.updated_fields) == ["discount_percentage"]
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
    assert (got.name, got.min_points, got.discount_percentage, got.version) == ("Gold", 1000, 50, 2)
    row = await superuser_conn.fetchrow(
        "SELECT topic, key, payload FROM outbox_events WHERE merchant_id = $1 ORDER BY seq DESC LIMIT 1",
        merchant,
    )
    assert await outbox_count(superuser_conn, merchant) == before + 1
    assert row["topic"] == "vip_tier.updated"
    assert row["key"] == f"{merchant}:gold"
    assert row["payload"]["updated_fields"] == ["discount_percentage"]


async def test_update_translations_and_benefits(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    resp = await stub.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant),
            tier_id="gold",
            tier=pb.VIPTier(translations={"ar": "ذهبي ممتاز"}, benefits=pb.Benefits(bonus_points=5)),
            update_mask=field_mask_pb2.FieldMask(paths=["translations", "benefits"]),
        )
    )
    assert sorted(resp.updated_fields) == ["benefits", "translations"]
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale="he"))
    assert dict(got.translations) == {"ar": "ذهبي ممتاز"}
    assert got.resolved_locale == "en"  # the Hebrew name was removed by the full translations replace
    assert got.benefits.bonus_points == 5
    assert len(got.benefits.custom_perks) == 0


async def test_stale_expected_version_is_aborted_and_changes_nothing(
    stub: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    before = await outbox_count(superuser_conn, merchant)
    err = await rpc_error(
        stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=pb.VIPTier(min_points=1),
                update_mask=field_mask_pb2.FieldMask(paths=["min_points"]),
                expected_version=7,
            )
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
    assert (got.min_points, got.version) == (1000, 1)
    assert await outbox_count(superuser_conn, merchant) == before


async def test_update_missing_tier_is_not_found(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    err = await rpc_error(
        stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=pb.VIPTier(name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_duplicate_create_is_already_exists(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    err = await rpc_error(create(stub, merchant))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_for_unprovisioned_merchant_is_not_found(stub: Any) -> None:
    err = await rpc_error(create(stub, uuid.uuid4()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "merchant" in (err.details() or "")


async def test_default_tier_moves(stub: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    await create(stub, merchant, gold(tier_id="basic", name="Basic", min_points=0, is_default=True, translations={}))
    await create(stub, merchant, gold(is_default=True))
    listed = await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
    assert {t.tier_id: t.is_default for t in listed.tiers} == {"basic": False, "gold": True}
    fields = await superuser_conn.fetch(
        "SELECT payload->>'tier_id' AS tier, payload->'updated_fields' AS f FROM outbox_events WHERE merchant_id = $1 ORDER BY seq",
        merchant,
    )
    assert [(r["tier"], r["f"]) for r in fields][-1] == ("basic", ["is_default"])


async def test_delete(stub: Any, new_merchant: Any, app_pool: Any) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    await create(stub, merchant, gold(tier_id="silver", name="Silver", min_points=10, translations={}))
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source) VALUES ($1, $2, 'silver', 'manual')",
            merchant,
            uuid.uuid4(),
        )
    held = await rpc_error(stub.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="silver")))
    assert held.code() == grpc.StatusCode.FAILED_PRECONDITION
    stale = await rpc_error(
        stub.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="gold", expected_version=3))
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    resp = await stub.DeleteVIPTier(
        pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="gold", expected_version=1)
    )
    assert resp.success
    gone = await rpc_error(stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    again = await rpc_error(stub.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="gold")))
    assert again.code() == grpc.StatusCode.NOT_FOUND


async def test_get_customer_tier(stub: Any, new_merchant: Any, app_pool: Any) -> None:
    merchant, customer, cause = await new_merchant(), uuid.uuid4(), uuid.uuid4()
    await create(stub, merchant)
    missing = await rpc_error(
        stub.GetCustomerTier(pb.GetCustomerTierRequest(merchant_id=str(merchant), customer_id=str(customer)))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source, cause_event_id)"
            " VALUES ($1, $2, 'gold', 'customer.created', $3)",
            merchant,
            customer,
            cause,
        )
    got = await stub.GetCustomerTier(
        pb.GetCustomerTierRequest(merchant_id=str(merchant), customer_id=str(customer), locale="he")
    )
    assert (got.tier.tier_id, got.tier.display_name, got.source, got.cause_event_id) == (
        "gold",
        "זהב",
        "customer.created",
        str(cause),
    )
    bad = await rpc_error(stub.GetCustomerTier(pb.GetCustomerTierRequest(merchant_id=str(merchant), customer_id="42")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(bad) == ["customer_id"]


async def test_evaluate_tier(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    for tier_id, points in (("silver", 100), ("gold", 1000), ("platinum", 5000)):
        await create(stub, merchant, gold(tier_id=tier_id, name=tier_id.title(), min_points=points, translations={}))

    async def evaluate(points: int) -> str:
        tier: pb.VIPTier = await stub.EvaluateTier(pb.EvaluateTierRequest(merchant_id=str(merchant), points=points))
        return tier.tier_id

    assert [await evaluate(p) for p in (100, 999, 1000, 4999, 5000, 2**62)] == [
        "silver",
        "silver",
        "gold",
        "gold",
        "platinum",
        "platinum",
    ]
    below = await rpc_error(stub.EvaluateTier(pb.EvaluateTierRequest(merchant_id=str(merchant), points=99)))
    assert below.code() == grpc.StatusCode.NOT_FOUND
    negative = await rpc_error(stub.EvaluateTier(pb.EvaluateTierRequest(merchant_id=str(merchant), points=-1)))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(negative) == ["points"]


async def test_merchants_cannot_see_each_other_through_the_api(stub: Any, new_merchant: Any) -> None:
    a, b = await new_merchant(), await new_merchant()
    await create(stub, b)
    err = await rpc_error(stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(a), tier_id="gold")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(a)))).tiers == []
