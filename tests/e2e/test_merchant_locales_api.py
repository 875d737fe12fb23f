"""The locale RPCs end to end through a real service process (issue 16): GetMerchantLocales,
UpdateMerchantLocales, GetTranslationReport (admin only), and what a reader of a merchant's new
locales gets back: resolved locale, direction and numbers, through the cache."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_WRITE
from tests.e2e.test_tier_api import create, gold, outbox_count, rpc_error, violations


async def test_locales_rpcs_round_trip(stub: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    m = str(merchant)
    got = await stub.GetMerchantLocales(pb.GetMerchantLocalesRequest(merchant_id=m))
    assert (list(got.locales), got.version) == (["en", "ar", "he"], 0)
    assert [d.direction for d in got.details] == ["ltr", "rtl", "rtl"]

    err = await rpc_error(
        stub.UpdateMerchantLocales(pb.UpdateMerchantLocalesRequest(merchant_id=m, locales=["en", "zh-TW", "qq"]))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == ["locales[1]", "locales[2]"]
    assert "zh-Hant-TW" in (err.details() or "")

    before = await outbox_count(superuser_conn, merchant)
    resp = await stub.UpdateMerchantLocales(
        pb.UpdateMerchantLocalesRequest(merchant_id=m, locales=["en", "ar", "he", "zh-Hant-TW", "sr-Latn-RS"])
    )
    assert (resp.changed, resp.locales.version) == (True, 1)
    assert await outbox_count(superuser_conn, merchant) == before + 1
    stale = await rpc_error(
        stub.UpdateMerchantLocales(pb.UpdateMerchantLocalesRequest(merchant_id=m, locales=["en"], expected_version=9))
    )
    assert stale.code() == grpc.StatusCode.ABORTED

    await create(
        stub, merchant, gold(translations={"ar": "ذهبي", "he": "זהב", "zh-Hant-TW": "黃金", "sr-Latn-RS": "Zlato"})
    )
    for requested, locale, name, direction in [
        ("zh-TW", "zh-Hant-TW", "黃金", "ltr"),
        ("sr-Latn-RS", "sr-Latn-RS", "Zlato", "ltr"),
        ("sr-Cyrl-RS", "en", "Gold", "ltr"),  # Latin Serbian is no fallback for Cyrillic
        ("ar-EG", "ar", "ذهبي", "rtl"),
    ]:
        for _ in range(2):  # the second from the cache
            tier = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=m, tier_id="gold", locale=requested))
            assert (tier.resolved_locale, tier.display_name, tier.resolved_direction) == (locale, name, direction)
    tier = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=m, tier_id="gold", locale="ar"))
    assert (tier.display_min_points, tier.display_bonus_points, tier.display_perks[0].direction) == (
        "1,000",
        "100",
        "rtl",
    )

    # Every display answer carries the direction beside resolved_locale, not only GetVIPTier's.
    evaluated = await stub.EvaluateTier(pb.EvaluateTierRequest(merchant_id=m, points=1500, locale="zh-TW"))
    assert (evaluated.resolved_locale, evaluated.resolved_direction) == ("zh-Hant-TW", "ltr")
    customer = str(uuid.uuid4())
    await stub.SetCustomerTier(
        pb.SetCustomerTierRequest(merchant_id=m, customer_id=customer, tier_id="gold", reason="goodwill")
    )
    held = await stub.GetCustomerTier(pb.GetCustomerTierRequest(merchant_id=m, customer_id=customer, locale="he-IL"))
    assert (held.tier.resolved_locale, held.tier.resolved_direction) == ("he", "rtl")
    assert [(p.locale, p.direction) for p in held.tier.display_perks] == [("he", "rtl")]
    status = await stub.GetCustomerTierStatus(
        pb.GetCustomerTierStatusRequest(merchant_id=m, customer_id=customer, locale="ar-EG")
    )
    assert (status.tier.resolved_locale, status.tier.resolved_direction) == ("ar", "rtl")

    report = await stub.GetTranslationReport(pb.GetTranslationReportRequest(merchant_id=m))
    assert report.locales_version == 1
    by_locale = {e.locale: e for e in report.locales}
    assert by_locale["ar"].percent_complete == 100.0
    gap = by_locale["zh-Hant-TW"].gaps[0]
    assert (gap.tier_id, gap.perk_code, gap.fallback_locale) == ("gold", "lounge", "en")
    assert by_locale["zh-Hant-TW"].percent_complete == 50.0

    busy = await rpc_error(stub.UpdateMerchantLocales(pb.UpdateMerchantLocalesRequest(merchant_id=m, locales=["en"])))
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_locale_rpcs_need_the_admin_scope(stub_for: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    writer = stub_for(merchant, scopes=[SCOPE_WRITE])
    for call in (
        writer.GetMerchantLocales(pb.GetMerchantLocalesRequest(merchant_id=str(merchant))),
        writer.UpdateMerchantLocales(pb.UpdateMerchantLocalesRequest(merchant_id=str(merchant), locales=["en"])),
        writer.GetTranslationReport(pb.GetTranslationReportRequest(merchant_id=str(merchant))),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED
