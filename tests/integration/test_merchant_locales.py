"""Per-merchant locales on the real PostgreSQL (migration 0040) and the real caches: the database
refuses, as raw SQL of the service role, text in a locale the merchant has not enabled and the
removal of a locale that still holds text; the round trip over CLDR locales; cached answers carry
direction and number formats and go when the merchant's set changes; the report's copied text."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from babel import Locale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_service import context
from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.errors import FailedPrecondition, InvalidArgument
from campaign_service.domain.locales import script_of
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.ports import ViewCache
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService
from tests.unit.test_locales import STORABLE, letters


async def as_app(app_pool: Any, merchant: uuid.UUID, sql: str, *args: Any) -> None:
    """One statement as the service role, scoped to `merchant` (what any writer with the
    service's credentials could send)."""
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(sql, *args)


INSERT_TIER = (
    "INSERT INTO vip_tiers (merchant_id, tier_id, name, locale, min_points, benefits) VALUES ($1, $2, $3, $4, 0, $5)"
)


async def test_the_database_refuses_text_in_a_locale_the_merchant_has_not_enabled(
    app_pool: Any, new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    merchant = await new_merchant()
    french_perk = {"custom_perks": [{"code": "salon", "label": {"fr": "Salon"}}]}
    with pytest.raises(asyncpg.CheckViolationError, match="locale: fr is not enabled"):
        await as_app(app_pool, merchant, INSERT_TIER, merchant, "or", "Or", "fr", {})
    with pytest.raises(asyncpg.CheckViolationError, match="label: fr is not enabled"):
        await as_app(app_pool, merchant, INSERT_TIER, merchant, "or", "Gold", "en", french_perk)
    await as_app(app_pool, merchant, INSERT_TIER, merchant, "gold", "Gold", "en", {})  # the default set
    with pytest.raises(asyncpg.CheckViolationError, match="translations: fr is not enabled"):
        await as_app(
            app_pool,
            merchant,
            "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'fr', 'Or')",
            merchant,
        )
    with pytest.raises(asyncpg.CheckViolationError, match="locale: fr is not enabled"):
        await as_app(app_pool, merchant, "UPDATE vip_tiers SET locale = 'fr' WHERE merchant_id = $1", merchant)

    # Enabled through the service: the same raw statements pass.
    await tier_service.update_locales(merchant, ["en", "fr"])
    await as_app(app_pool, merchant, INSERT_TIER, merchant, "or", "Or", "fr", french_perk)
    await as_app(
        app_pool,
        merchant,
        "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'fr', 'Or')",
        merchant,
    )
    # ar and he are not enabled any more (the merchant chose en and fr).
    with pytest.raises(asyncpg.CheckViolationError, match="translations: ar is not enabled"):
        await as_app(
            app_pool,
            merchant,
            "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'ar', 'ذهبي')",
            merchant,
        )
    # Removing a locale that holds text: refused by the database too, whoever writes.
    with pytest.raises(asyncpg.RestrictViolationError, match="locales: fr still holds tier text"):
        await as_app(
            app_pool, merchant, "UPDATE merchant_locales SET locales = '{en}' WHERE merchant_id = $1", merchant
        )
    with pytest.raises(asyncpg.CheckViolationError, match="not a locale tag"):
        await as_app(
            app_pool, merchant, "UPDATE merchant_locales SET locales = '{en,fr,EN_us}' WHERE merchant_id = $1", merchant
        )
    # Only locales CLDR knows (migration 0042): a well-shaped tag it does not know is refused too.
    for unknown in ("xx", "de-US", "qq-Latn-ZZ"):
        with pytest.raises(asyncpg.CheckViolationError, match=f"{unknown} is not a locale tag CLDR knows"):
            await as_app(
                app_pool,
                merchant,
                "UPDATE merchant_locales SET locales = array_append(locales, $2) WHERE merchant_id = $1",
                merchant,
                unknown,
            )
    await as_app(
        app_pool,
        merchant,
        "UPDATE merchant_locales SET locales = array_append(locales, 'zh-Hant-TW') WHERE merchant_id = $1",
        merchant,
    )
    with pytest.raises(FailedPrecondition, match="fr still hold text"):
        await tier_service.update_locales(merchant, ["en"])


async def test_another_merchants_set_does_not_count(
    app_pool: Any, new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    french, other = await new_merchant(), await new_merchant()
    await tier_service.update_locales(french, ["en", "fr"])
    with pytest.raises(asyncpg.CheckViolationError, match="locale: fr is not enabled"):
        await as_app(app_pool, other, INSERT_TIER, other, "or", "Or", "fr", {})
    # and no merchant can write another's set (RLS)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_app(app_pool, other, "INSERT INTO merchant_locales (merchant_id, locales) VALUES ($1, '{fr}')", french)


async def test_the_service_refuses_what_the_database_refuses(
    new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    merchant = await new_merchant()
    with pytest.raises(InvalidArgument) as raised:
        await tier_service.create(merchant, "or", TierSpec(name="Or", locale="fr"))
    assert [v.field for v in raised.value.violations] == ["tier.locale"]
    with pytest.raises(InvalidArgument) as raised:
        await tier_service.update_locales(merchant, ["en", "klingon"])
    assert [v.field for v in raised.value.violations] == ["locales[1]"]


async def round_trip(locale: str, name: str, owner_conn: asyncpg.Connection[Any], tier_service: TierService) -> None:
    """Enable `locale`, write a tier name and a perk label in it, read them back with direction."""
    merchant = uuid.uuid4()
    await owner_conn.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
    await tier_service.update_locales(merchant, list(dict.fromkeys(["en", locale])))
    spec = TierSpec(
        name="Gold",
        min_points=25000,
        translations={locale: name} if locale != "en" else {},
        benefits=Benefits(custom_perks=(Perk("gift", {locale: name}),)),
    )
    await tier_service.create(merchant, "gold", spec)
    msg = pb.VIPTier.FromString(render_tier(await tier_service.get_tier(merchant, "gold"), locale))
    # `ltr` or `rtl`: CLDR's vertical order (`ttb`, traditional Mongolian) is laid out left to
    # right (comparing with CLDR's raw value failed whenever hypothesis drew mn-Mong*).
    direction = "rtl" if Locale.parse(locale, sep="-").text_direction == "rtl" else "ltr"
    assert (msg.resolved_locale, msg.resolved_direction) == (locale, direction)
    assert msg.display_name == (name if locale != "en" else "Gold")
    [perk] = msg.display_perks
    assert (perk.label, perk.locale, perk.direction) == (name, locale, direction)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(locale=st.sampled_from(STORABLE), data=st.data())
async def test_round_trip_over_cldr_locales(
    locale: str, data: st.DataObject, owner_conn: asyncpg.Connection[Any], tier_service: TierService
) -> None:
    name = unicodedata.normalize(
        "NFC", data.draw(st.text(alphabet=letters(script_of(locale) or "Latn"), min_size=1, max_size=30))
    )
    await round_trip(locale, name, owner_conn, tier_service)


@pytest.mark.parametrize(
    ("locale", "name"),
    [("mn-Mong", "\u182a\u1820\u1837\u1820"), ("zh-Hant-TW", "黃金"), ("sr-Latn-RS", "Zlato"), ("ar-EG", "ذهبي")],
)
async def test_round_trip_pinned(
    locale: str, name: str, owner_conn: asyncpg.Connection[Any], tier_service: TierService
) -> None:
    """The cases a random draw rarely makes: vertical script, three-part tags, Arabic-Indic digits."""
    await round_trip(locale, name, owner_conn, tier_service)


@pytest.fixture(params=["redis", "memory"])
async def view_cache(
    request: pytest.FixtureRequest, redis_view_cache: Callable[..., Awaitable[RedisViewCache]]
) -> ViewCache:
    if request.param == "memory":
        return MemoryViewCache(ttl_s=3600, max_bytes=1 << 20)
    return await redis_view_cache()


async def test_cached_answers_carry_direction_and_numbers_and_go_when_the_set_changes(
    view_cache: ViewCache, app_pool: Any, new_merchant: Callable[[], Any]
) -> None:
    merchant = await new_merchant()
    tiers = TierService(PgUnitOfWork(app_pool), [view_cache])
    reads = TierReads(tiers, view_cache, render_tier, render_tiers)
    gold = TierSpec(name="Gold", min_points=1500, discount_percentage=15, translations={"ar": "ذهبي"})
    await tiers.create(merchant, "gold", gold)

    first = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar-EG"))
    cached = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar-EG"))
    assert context.cache_result.get() == "hit"
    assert cached == first
    assert (cached.resolved_locale, cached.resolved_direction, cached.display_min_points) == ("ar", "rtl", "1,500")
    listed = pb.ListVIPTiersResponse.FromString(await reads.tiers(merchant, "ar"))
    assert listed.tiers[0].resolved_direction == "rtl"

    # Enabling ar-EG (where CLDR writes Arabic-Indic digits) and giving the tier a name in it:
    await tiers.update_locales(merchant, ["en", "ar", "he", "ar-EG"])
    after = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar-EG"))
    assert context.cache_result.get() == "miss"  # the set change dropped it
    await reads.tiers(merchant, "ar")
    assert context.cache_result.get() == "miss"
    assert after.resolved_locale == "ar"
    await tiers.update(
        merchant, "gold", TierSpec(name="x", translations={"ar": "ذهبي", "ar-EG": "دهبي"}), ["translations"]
    )
    egyptian = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar-EG"))
    assert (egyptian.resolved_locale, egyptian.display_name) == ("ar-EG", "دهبي")
    assert (egyptian.display_min_points, egyptian.resolved_direction) == ("١٬٥٠٠", "rtl")
    assert egyptian.display_discount.startswith("١٥")


async def test_report_counts_a_copied_name_written_past_the_service_as_missing(
    app_pool: Any, new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    merchant = await new_merchant()
    await tier_service.create(
        merchant,
        "gold",
        TierSpec(
            name="Gold",
            translations={"he": "זהב"},
            benefits=Benefits(custom_perks=(Perk("lounge", {"en": "Lounge", "ar": "صالة"}),)),
        ),
    )
    await tier_service.create(merchant, "silver", TierSpec(name="Silver", min_points=10))
    # The database checks locales, not scripts: a copy of the English name as "Arabic".
    await as_app(
        app_pool,
        merchant,
        "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'ar', 'Gold')",
        merchant,
    )
    stored, entries = await tier_service.translation_report(merchant)
    assert stored.version == 0
    by_locale = {e.locale: e for e in entries}
    assert [(g.tier_id, g.perk_code, g.fallback_locale, g.copied) for g in by_locale["ar"].gaps] == [
        ("gold", "", "en", True),
        ("silver", "", "en", False),
    ]
    assert (by_locale["ar"].present, by_locale["ar"].total) == (1, 3)
    assert [(g.tier_id, g.perk_code) for g in by_locale["he"].gaps] == [("gold", "lounge"), ("silver", "")]
    assert by_locale["en"].gaps == ()


async def test_a_set_change_waits_for_a_tier_write_in_flight_and_then_sees_its_text(
    app_pool: Any, new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    """No write skew: the tier write holds the merchant's set FOR SHARE until it commits, so a
    removal of the locale it writes in waits, then finds the text and is refused."""
    merchant = await new_merchant()
    await tier_service.update_locales(merchant, ["en", "fr"])
    await as_app(app_pool, merchant, INSERT_TIER, merchant, "gold", "Gold", "en", {})
    async with app_pool.acquire() as writer, app_pool.acquire() as remover:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await writer.execute(
            "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'fr', 'Or')",
            merchant,
        )

        async def remove_fr() -> None:
            async with remover.transaction():
                await remover.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                await remover.execute("UPDATE merchant_locales SET locales = '{en}' WHERE merchant_id = $1", merchant)

        removal = asyncio.ensure_future(remove_fr())
        await asyncio.sleep(0.5)
        assert not removal.done()  # blocked behind the write's FOR SHARE lock
        await tx.commit()
        with pytest.raises(asyncpg.RestrictViolationError, match="fr still holds tier text"):
            await asyncio.wait_for(removal, 10)
    assert (await tier_service.locales(merchant)).locales == ("en", "fr")


async def test_the_first_set_change_racing_the_first_tier_write_is_a_failed_precondition(
    app_pool: Any, new_merchant: Callable[[], Any], tier_service: TierService
) -> None:
    """A merchant with no stored set (the default) has no row for the service to lock: its check
    sees no text, then the database finds the text the racing write committed. The answer is
    still FAILED_PRECONDITION naming the locale (the database's restrict_violation, 0041), not
    INVALID_ARGUMENT."""
    merchant = await new_merchant()
    async with app_pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await writer.execute(INSERT_TIER, merchant, "gold", "זהב", "he", {})  # inserts the default set
        change = asyncio.ensure_future(tier_service.update_locales(merchant, ["en", "ar"]))
        await asyncio.sleep(0.5)
        assert not change.done()  # its INSERT waits for the write's row of the set
        await tx.commit()
        with pytest.raises(FailedPrecondition, match="he still holds tier text"):
            await asyncio.wait_for(change, 10)
    assert (await tier_service.locales(merchant)).locales == ("en", "ar", "he")
