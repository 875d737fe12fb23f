"""Scheduled (effective-dated) tier changes are held to the merchant's locales (issue 16, migration
0041), on the real PostgreSQL: a change may write text in any locale the merchant enabled (not
the default en/ar/he), one in a locale it has not enabled is refused naming the field (by the
service, and by the database as raw SQL), a locale a pending change will write cannot leave the
set, and a change that no longer fits the set at its time fails instead of blocking the merchant."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.errors import FailedPrecondition, InvalidArgument
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.tiers import TierService
from tests.integration.test_merchant_locales import as_app
from tests.integration.test_scheduled_changes import HOUR, T0, Clock, changes_of


async def french_merchant(new_merchant: Any, tier_service: TierService) -> uuid.UUID:
    """A merchant with a default tier that chose en and fr (so ar and he are not enabled)."""
    merchant: uuid.UUID = await new_merchant()
    await tier_service.create(merchant, "basic", TierSpec(name="Basic", is_default=True))
    await tier_service.update_locales(merchant, ["en", "fr"])
    return merchant


FRENCH = TierSpec(
    name="Or",
    locale="fr",
    min_points=1000,
    translations={"en": "Gold"},
    benefits=Benefits(custom_perks=(Perk("salon", {"fr": "Salon privé"}),)),
)


async def test_a_scheduled_change_writes_text_in_the_merchants_own_locales(
    dated: ScheduledChanges, new_merchant: Any, tier_service: TierService, clock: Clock, superuser_conn: Any
) -> None:
    merchant = await french_merchant(new_merchant, tier_service)
    await dated.schedule_create(merchant, "or", FRENCH, T0 + HOUR)
    await dated.schedule_update(
        merchant, "basic", TierSpec(name="x", translations={"fr": "Base"}), ["translations"], T0 + HOUR
    )

    # Read as of its time before the activator ran: the pending changes are shown (the replay
    # checks them against the merchant's set, not en/ar/he).
    view = await dated.tiers_at(merchant, T0 + HOUR)
    assert {t.tier_id: t.display("fr-CA").name for t in view.tiers} == {"basic": "Base", "or": "Or"}

    clock.now = T0 + HOUR
    assert await dated.activate_merchant(merchant) == 2
    assert [r["state"] for r in await changes_of(superuser_conn, merchant)] == ["applied", "applied"]
    gold = await tier_service.get_tier(merchant, "or")
    assert (gold.spec.locale, gold.display("fr").perks[0].label) == ("fr", "Salon privé")
    assert (await tier_service.get_tier(merchant, "basic")).spec.translations == {"fr": "Base"}


async def test_a_scheduled_change_in_a_locale_not_enabled_is_refused_and_stores_nothing(
    dated: ScheduledChanges, new_merchant: Any, tier_service: TierService, app_pool: Any, superuser_conn: Any
) -> None:
    merchant = await french_merchant(new_merchant, tier_service)
    with pytest.raises(InvalidArgument) as raised:
        await dated.schedule_create(merchant, "gold", TierSpec(name="Gold", translations={"ar": "ذهبي"}), T0 + HOUR)
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("tier.translations.ar", "locale 'ar' is not enabled for this merchant; enabled: en, fr")
    ]
    perk = Benefits(custom_perks=(Perk("lounge", {"he": "טרקלין"}),))
    with pytest.raises(InvalidArgument) as raised:
        await dated.schedule_update(merchant, "basic", TierSpec(name="x", benefits=perk), ["benefits"], T0 + HOUR)
    assert [v.field for v in raised.value.violations] == ["tier.benefits.custom_perks[0].label"]
    assert await changes_of(superuser_conn, merchant) == []

    # The database refuses it too, as raw SQL of the service role.
    payload = {"spec": {"locale": "ar", "translations": {}}, "mask": ["locale"], "id": None}
    with pytest.raises(asyncpg.CheckViolationError, match="locale: ar is not enabled"):
        await as_app(
            app_pool,
            merchant,
            "INSERT INTO tier_scheduled_changes (merchant_id, change_id, target, kind, payload, mode, effective_at)"
            " VALUES ($1, $2, 'basic', 'tier_update', $3, 'upgrades_only', now() + interval '1 day')",
            merchant,
            uuid.uuid4(),
            payload,
        )


async def test_a_locale_a_pending_change_will_write_cannot_leave_the_set(
    dated: ScheduledChanges, new_merchant: Any, tier_service: TierService, app_pool: Any
) -> None:
    merchant = await french_merchant(new_merchant, tier_service)
    change = await dated.schedule_create(merchant, "or", FRENCH, T0 + HOUR)
    with pytest.raises(
        FailedPrecondition, match=f"fr still hold text: scheduled tier_create of or \\({change.change_id}\\)"
    ):
        await tier_service.update_locales(merchant, ["en"])
    with pytest.raises(asyncpg.RestrictViolationError, match="fr is used by a pending scheduled change"):
        await as_app(
            app_pool, merchant, "UPDATE merchant_locales SET locales = '{en}' WHERE merchant_id = $1", merchant
        )
    assert (await tier_service.locales(merchant)).locales == ("en", "fr")

    await dated.cancel(merchant, change.change_id)
    stored, changed = await tier_service.update_locales(merchant, ["en"])
    assert (stored.locales, changed) == (("en",), True)


async def test_a_change_whose_locale_left_the_set_fails_at_its_time_and_does_not_block_the_next(
    dated: ScheduledChanges, new_merchant: Any, tier_service: TierService, clock: Clock, superuser_conn: Any
) -> None:
    """A pending change stored before 0041 could use a locale since removed: its activation fails
    (state `failed`, the locale named) and the merchant's later change still takes effect. (Before
    the fix it was checked against en/ar/he, passed, met the translations trigger and raised on
    every activator pass, holding up the merchant's later changes.)"""
    merchant = await french_merchant(new_merchant, tier_service)
    await tier_service.update_locales(merchant, ["en", "fr", "ar"])
    early = await dated.schedule_create(
        merchant, "gold", TierSpec(name="Gold", min_points=1000, translations={"ar": "ذهبي"}), T0 + HOUR
    )
    later = await dated.schedule_update(merchant, "basic", TierSpec(name="Base"), ["name"], T0 + 2 * HOUR)
    # As before 0041: the set loses ar past the triggers (a superuser, replica mode).
    await superuser_conn.execute("SET session_replication_role = replica")
    try:
        await superuser_conn.execute("UPDATE merchant_locales SET locales = '{en,fr}' WHERE merchant_id = $1", merchant)
    finally:
        await superuser_conn.execute("SET session_replication_role = DEFAULT")

    clock.now = T0 + 2 * HOUR
    assert await dated.activate_merchant(merchant) == 2
    states = {r["change_id"]: (r["state"], r["error"]) for r in await changes_of(superuser_conn, merchant)}
    assert states[early.change_id][0] == "failed"
    assert "'ar' is not enabled" in states[early.change_id][1] or "ar is not enabled" in states[early.change_id][1]
    assert states[later.change_id] == ("applied", None)
    assert (await tier_service.get_tier(merchant, "basic")).spec.name == "Base"


async def test_a_set_change_waits_for_a_change_being_scheduled_and_then_sees_it(
    new_merchant: Any, tier_service: TierService, app_pool: Any
) -> None:
    """No write skew: storing a pending change reads the set FOR SHARE (0041's trigger), so a
    removal of the locale it writes waits for its commit, then finds it and is refused."""
    merchant = await french_merchant(new_merchant, tier_service)
    payload = {"spec": {"locale": "fr", "translations": {}}, "mask": ["locale"], "id": None}
    async with app_pool.acquire() as scheduler, app_pool.acquire() as remover:
        tx = scheduler.transaction()
        await tx.start()
        await scheduler.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await scheduler.execute(
            "INSERT INTO tier_scheduled_changes (merchant_id, change_id, target, kind, payload, mode, effective_at)"
            " VALUES ($1, $2, 'basic', 'tier_update', $3, 'upgrades_only', now() + interval '1 day')",
            merchant,
            uuid.uuid4(),
            payload,
        )

        async def remove_fr() -> None:
            async with remover.transaction():
                await remover.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                await remover.execute("UPDATE merchant_locales SET locales = '{en}' WHERE merchant_id = $1", merchant)

        removal = asyncio.ensure_future(remove_fr())
        await asyncio.sleep(0.5)
        assert not removal.done()  # blocked behind the scheduling's FOR SHARE lock
        await tx.commit()
        with pytest.raises(asyncpg.RestrictViolationError, match="fr is used by a pending scheduled change"):
            await asyncio.wait_for(removal, 10)
    assert (await tier_service.locales(merchant)).locales == ("en", "fr")
