"""Every validation rule through the real server: INVALID_ARGUMENT naming the field, and a rejected
request changes nothing (no row, no version bump, no outbox event)."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_pb2 as pb
from tests.e2e.test_tier_api import create, gold, outbox_count, rpc_error, violations

BAD_TIERS: list[tuple[str, dict[str, Any], str]] = [
    ("negative min_points", {"min_points": -1}, "tier.min_points"),
    ("min_points beyond integer", {"min_points": 2**31}, "tier.min_points"),
    ("discount below 0", {"discount_percentage": -1}, "tier.discount_percentage"),
    ("discount above 100", {"discount_percentage": 101}, "tier.discount_percentage"),
    ("unknown locale", {"locale": "fr"}, "tier.locale"),
    ("blank name", {"name": "   "}, "tier.name"),
    ("empty name", {"name": ""}, "tier.name"),
    ("too long name", {"name": "G" * 101}, "tier.name"),
    ("not NFC", {"name": unicodedata.normalize("NFD", "Café")}, "tier.name"),
    ("bidi override", {"name": "Gold\u202eplo"}, "tier.name"),
    ("bidi isolate", {"name": "Gold\u2067x"}, "tier.name"),
    ("NUL byte", {"name": "Gold\x00"}, "tier.name"),
    ("arabic without arabic letter", {"name": "Gold", "locale": "ar", "translations": {}}, "tier.name"),
    ("hebrew without hebrew letter", {"name": "ذهبي", "locale": "he", "translations": {}}, "tier.name"),
    ("translation in unknown locale", {"translations": {"fr": "Or"}}, "tier.translations.fr"),
    ("arabic translation in latin", {"translations": {"ar": "Gold"}}, "tier.translations.ar"),
    ("hebrew translation with bidi", {"translations": {"he": "זהב\u202d"}}, "tier.translations.he"),
    ("negative bonus", {"benefits": pb.Benefits(bonus_points=-1)}, "tier.benefits.bonus_points"),
    ("huge bonus", {"benefits": pb.Benefits(bonus_points=10**12)}, "tier.benefits.bonus_points"),
    (
        "bad perk code",
        {"benefits": pb.Benefits(custom_perks=[pb.Perk(code="Bad Code", label={"en": "x"})])},
        "tier.benefits.custom_perks[0].code",
    ),
    (
        "perk label locale",
        {"benefits": pb.Benefits(custom_perks=[pb.Perk(code="a", label={"xx": "x"})])},
        "tier.benefits.custom_perks[0].label",
    ),
    (
        "perk label script",
        {"benefits": pb.Benefits(custom_perks=[pb.Perk(code="a", label={"he": "Lounge"})])},
        "tier.benefits.custom_perks[0].label.he",
    ),
    (
        "too many perks",
        {"benefits": pb.Benefits(custom_perks=[pb.Perk(code=f"p{i}", label={"en": "x"}) for i in range(51)])},
        "tier.benefits.custom_perks",
    ),
    (
        "benefits over 16 KiB",
        {
            "benefits": pb.Benefits(
                custom_perks=[pb.Perk(code=f"p{i}", label={"en": "x" * 200, "ar": "ب" * 200}) for i in range(50)]
            )
        },
        "tier.benefits",
    ),
    ("bad tier id", {"tier_id": "Gold Tier"}, "tier.tier_id"),
    ("sql in tier id", {"tier_id": "gold'; DROP TABLE vip_tiers; --"}, "tier.tier_id"),
]


@pytest.mark.parametrize(("case", "fields", "field"), BAD_TIERS, ids=[c[0] for c in BAD_TIERS])
async def test_create_rejects_with_field(
    stub: Any, new_merchant: Any, superuser_conn: Any, case: str, fields: dict[str, Any], field: str
) -> None:
    merchant = await new_merchant()
    err = await rpc_error(create(stub, merchant, gold(**fields)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in violations(err)
    assert "Traceback" not in (err.details() or "")
    assert "SELECT" not in (err.details() or "")
    assert await superuser_conn.fetchval("SELECT count(*) FROM vip_tiers WHERE merchant_id = $1", merchant) == 0
    assert await outbox_count(superuser_conn, merchant) == 0


@pytest.mark.parametrize(("case", "fields", "field"), BAD_TIERS[:-2], ids=[c[0] for c in BAD_TIERS[:-2]])
async def test_update_rejects_with_field_and_changes_nothing(
    stub: Any, new_merchant: Any, superuser_conn: Any, case: str, fields: dict[str, Any], field: str
) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    before = await superuser_conn.fetchrow("SELECT * FROM vip_tiers WHERE merchant_id = $1", merchant)
    events = await outbox_count(superuser_conn, merchant)
    paths = [p for p in fields if p != "tier_id"]
    err = await rpc_error(
        stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=gold(**fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in violations(err)
    after = await superuser_conn.fetchrow("SELECT * FROM vip_tiers WHERE merchant_id = $1", merchant)
    assert dict(after) == dict(before)
    assert await outbox_count(superuser_conn, merchant) == events


@pytest.mark.parametrize(
    ("merchant_id", "field"),
    [
        ("", "merchant_id"),
        ("not-a-uuid", "merchant_id"),
        ("123e4567e89b12d3a456426614174000", "merchant_id"),
        ("'; DROP TABLE merchants; --", "merchant_id"),
    ],
)
async def test_bad_merchant_id_everywhere(stub: Any, merchant_id: str, field: str) -> None:
    calls = [
        stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=merchant_id, tier_id="gold")),
        stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=merchant_id)),
        stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=merchant_id, tier=gold())),
        stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=merchant_id, tier_id="gold", update_mask=field_mask_pb2.FieldMask(paths=["name"])
            )
        ),
        stub.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=merchant_id, tier_id="gold")),
        stub.GetCustomerTier(pb.GetCustomerTierRequest(merchant_id=merchant_id, customer_id=str(uuid.uuid4()))),
        stub.EvaluateTier(pb.EvaluateTierRequest(merchant_id=merchant_id, points=1)),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err) == [field]


@pytest.mark.parametrize(
    ("paths", "field"),
    [([], "update_mask"), (["version"], "update_mask"), (["tier_id"], "update_mask"), (["nope"], "update_mask")],
)
async def test_bad_update_mask(stub: Any, new_merchant: Any, paths: list[str], field: str) -> None:
    merchant = await new_merchant()
    await create(stub, merchant)
    err = await rpc_error(
        stub.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=gold(),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [field]


async def test_mismatched_merchant_in_tier_is_invalid(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    err = await rpc_error(create(stub, merchant, gold(merchant_id=str(uuid.uuid4()))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == ["tier.merchant_id"]


async def test_several_violations_reported_together(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    err = await rpc_error(create(stub, merchant, gold(name="", min_points=-5, discount_percentage=200)))
    assert violations(err) == ["tier.name", "tier.min_points", "tier.discount_percentage"]
