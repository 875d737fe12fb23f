"""Per-merchant locales (issue 16): CLDR validity, fallback chains of three-part tags, the cache
key, script and direction of every CLDR locale, number formats, the set's changes and the
translation report, on the use cases with the in-memory unit of work."""

from __future__ import annotations

import random
import unicodedata
import uuid
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from uuid import UUID

import pytest
from babel import Locale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from campaign_service import context, topics
from campaign_service.api.mapping import locales_to_proto, report_to_proto, tier_to_proto
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.errors import FailedPrecondition, InvalidArgument, VersionConflict
from campaign_service.domain.locales import (
    _STORABLE,
    CLDR_LOCALES,
    DEFAULT_LOCALES,
    MerchantLocales,
    cldr_violation,
    direction,
    display_key,
    fallback_chain,
    format_integer,
    format_percent,
    resolve,
    script_of,
)
from campaign_service.domain.text import SCRIPT_LETTERS, script_writable, text_violations
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.domain.translations import report
from campaign_service.service.tiers import LOCALES_EVENT_TIER_ID, TierService
from tests.fakes import FakeUnitOfWork

# Every locale a merchant could enable: canonical CLDR tags whose script this Python can write.
STORABLE = sorted(t for t in CLDR_LOCALES if _STORABLE.fullmatch(t) and script_writable(t))


@cache
def letters(script: str) -> str:
    """Letters of `script` (as text.py recognises them), a bounded sample."""
    prefixes = SCRIPT_LETTERS[script][1]
    found = [
        chr(c)
        for c in range(0x20000)
        if unicodedata.category(chr(c)).startswith("L") and unicodedata.name(chr(c), "").startswith(prefixes)
    ]
    return "".join(random.Random(script).sample(found, min(len(found), 200)))


# -- fallback chains ---------------------------------------------------------------------------


def test_three_part_tags_fall_back_along_cldr_parents_within_their_script() -> None:
    assert fallback_chain("zh-Hant-TW") == ("zh-Hant-TW", "zh-TW", "zh-Hant")  # never `zh`: Simplified
    assert fallback_chain("zh-TW") == fallback_chain("zh-Hant-TW")  # the likely script fills in
    assert fallback_chain("sr-Latn-RS") == ("sr-Latn-RS", "sr-Latn")  # never `sr`: Cyrillic
    assert fallback_chain("sr-Cyrl-RS") == ("sr-Cyrl-RS", "sr-RS", "sr-Cyrl", "sr")
    assert fallback_chain("en-AU")[-3:] == ("en-001", "en-Latn", "en")  # CLDR's parent exception
    assert fallback_chain("es-MX") == ("es-Latn-MX", "es-MX", "es-419", "es-Latn", "es")
    assert fallback_chain("ar-EG") == ("ar-Arab-EG", "ar-EG", "ar-Arab", "ar")
    assert fallback_chain("") == ()


CHINESE = {"en": "Gold", "zh-Hant": "黃金", "zh": "黄金", "sr": "Злато", "sr-Latn": "Zlato"}


@pytest.mark.parametrize(
    ("requested", "default", "available", "expected"),
    [
        ("zh-Hant-TW", "en", CHINESE, "zh-Hant"),
        ("zh-TW", "en", CHINESE, "zh-Hant"),
        ("zh-Hant-TW", "en", {**CHINESE, "zh-Hant-TW": "黃金級"}, "zh-Hant-TW"),
        ("zh-CN", "en", CHINESE, "zh"),
        ("zh-Hant-TW", "en", {"en": "Gold", "zh": "黄金"}, "en"),  # Simplified is no fallback
        ("sr-Latn-RS", "en", CHINESE, "sr-Latn"),
        ("sr-RS", "en", CHINESE, "sr"),
        ("sr-Latn-RS", "sr", {"sr": "Злато", "en": "Gold"}, "sr"),  # then the tier's default
        ("sr-Latn-RS", "zh", {"zh": "黄金", "en": "Gold"}, "zh"),
        ("ar-EG", "en", {"en": "Gold", "ar": "ذهبي"}, "ar"),  # as before issue 16
        ("he-IL", "ar", {"ar": "ذهبي", "he": "זהב"}, "he"),
    ],
)
def test_resolve_over_a_merchants_locales(
    requested: str, default: str, available: dict[str, str], expected: str
) -> None:
    assert resolve(requested, default, available) == (expected, available[expected])


def test_every_cldr_locale_keys_the_cache_by_a_tag_with_the_same_chain() -> None:
    """display_key(t) resolves exactly like t for any stored text (text is only in CLDR locales)."""
    for tag in sorted(CLDR_LOCALES):
        key = display_key(tag)
        assert key in CLDR_LOCALES
        assert [t for t in fallback_chain(key) if t in CLDR_LOCALES] == [
            t for t in fallback_chain(tag) if t in CLDR_LOCALES
        ]


@given(
    st.sampled_from(sorted(CLDR_LOCALES)),
    st.sampled_from(["", "-US", "-TW", "-RS", "-Latn", "-Hant", "-Cyrl-RS", "-419", "-x1x1x", "-GB-oxendict"]),
)
def test_any_tag_keys_the_cache_by_a_tag_with_the_same_chain(base: str, suffix: str) -> None:
    tag = base.split("-")[0] + suffix
    key = display_key(tag)
    assert key == "" or key in CLDR_LOCALES
    assert [t for t in fallback_chain(key) if t in CLDR_LOCALES] == [
        t for t in fallback_chain(tag) if t in CLDR_LOCALES
    ]


# -- validity, script, direction ---------------------------------------------------------------


def test_cldr_validity() -> None:
    for tag in ("en", "fr", "pt-BR", "zh-Hant-TW", "sr-Latn-RS", "es-419", "ar", "he"):
        assert cldr_violation(tag) is None
    assert cldr_violation("zh-TW") == "unknown locale 'zh-TW'; CLDR calls it 'zh-Hant-TW'"
    assert cldr_violation("xx") == "unknown locale 'xx': CLDR has no data for it"
    assert cldr_violation("de-US") == "unknown locale 'de-US': CLDR has no data for it"
    assert cldr_violation("ca-ES-valencia") is not None
    assert cldr_violation("not a tag") == "not a well-formed BCP 47 language tag"


def test_every_cldr_locale_has_a_known_script_and_its_own_name_passes_the_script_check() -> None:
    """The script check generalises from CLDR: each locale's own name for itself (CLDR text in the
    locale) is acceptable text in it, and a text with no letter of its script is not."""
    for tag in STORABLE:
        assert script_of(tag) in SCRIPT_LETTERS, tag
        name = Locale.parse(tag, sep="-").display_name
        if name:
            assert text_violations(name[:100], tag, "n", 100) == [], tag
        assert any("must contain at least one" in v.description for v in text_violations("123", tag, "n", 100))


def test_direction_follows_cldr() -> None:
    assert [direction(t) for t in ("en", "ar", "he", "fa", "ur", "zh-Hant-TW", "sr-Latn-RS")] == [
        "ltr",
        "rtl",
        "rtl",
        "rtl",
        "rtl",
        "ltr",
        "ltr",
    ]
    assert direction("mn-Mong") == "ltr"  # CLDR says `ttb` (vertical); the contract is ltr or rtl


def test_numbers_are_written_as_the_locale_writes_them() -> None:
    assert format_integer(1234567, "en") == "1,234,567"
    assert format_integer(1234567, "ar-EG") == "١٬٢٣٤٬٥٦٧"  # Arabic-Indic digits (CLDR: arab)
    assert format_integer(1234567, "fa") == "۱٬۲۳۴٬۵۶۷"  # Extended Arabic-Indic (arabext)
    assert format_integer(1234567, "ar") == "1,234,567"  # CLDR's `ar` defaults to Latin digits
    assert format_integer(1234567, "hi") == "12,34,567"
    assert format_integer(1234567, "bn") == "১২,৩৪,৫৬৭"
    assert format_percent(15, "en") == "15%"
    assert format_percent(15, "fr") == "15\xa0%"
    assert format_percent(15, "ar-EG").startswith("١٥")


def test_every_locale_whose_cldr_digits_are_not_latin_gets_its_own_digits() -> None:
    """Babel formats grouping and symbols by the numbering system but leaves the digits Latin;
    format_integer maps them. A numbering system it does not know would silently stay Latin."""
    for tag in STORABLE:
        system = Locale.parse(tag, sep="-").default_numbering_system
        written = format_integer(1234567890, tag)
        if system == "latn":
            assert any(ch in "0123456789" for ch in written), tag
        else:
            assert not any(ch in "0123456789" for ch in written), (tag, system, written)
            assert all(unicodedata.numeric(ch, -1) >= 0 for ch in written if unicodedata.category(ch) == "Nd"), tag


# -- the round trip: enable, write in the locale's script, read back with direction -------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STORABLE), st.data())
async def test_enable_write_and_read_back_in_any_cldr_locale(locale: str, data: st.DataObject) -> None:
    db = FakeUnitOfWork()
    service = TierService(db)
    merchant = db.provision()
    alphabet = letters(script_of(locale) or "Latn")
    name = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=20).map(lambda s: unicodedata.normalize("NFC", s)))
    if text_violations(name, locale, "n", 100):
        return  # NFC may compose letters away; rare
    enabled = ["en", locale] if locale != "en" else ["en"]
    stored, changed = await service.update_locales(merchant, enabled)
    assert (stored.locales, changed) == (tuple(enabled), True)
    translations = {locale: name} if locale != "en" else {}
    await service.create(merchant, "gold", TierSpec(name="Gold", translations=translations, min_points=1234))
    tier = await service.get_tier(merchant, "gold")
    msg = tier_to_proto(tier, locale)
    assert msg.resolved_locale == locale
    assert msg.display_name == (name if locale != "en" else "Gold")
    # The contract is `ltr` or `rtl`: CLDR's vertical order (`ttb`, traditional Mongolian) is laid
    # out left to right by a horizontal frontend.
    cldr = Locale.parse(locale, sep="-").text_direction
    assert msg.resolved_direction == ("rtl" if cldr == "rtl" else "ltr")
    assert msg.display_min_points == format_integer(1234, locale)


async def test_a_locale_not_enabled_is_refused_naming_the_field() -> None:
    db = FakeUnitOfWork()
    service = TierService(db)
    merchant = db.provision()
    with pytest.raises(InvalidArgument) as raised:
        await service.create(merchant, "gold", TierSpec(name="Or", locale="fr"))
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("tier.locale", "locale 'fr' is not enabled for this merchant; enabled: en, ar, he")
    ]
    await service.update_locales(merchant, ["fr", "en"])
    await service.create(merchant, "gold", TierSpec(name="Or", locale="fr", translations={"en": "Gold"}))
    with pytest.raises(InvalidArgument) as raised:
        await service.update(merchant, "gold", TierSpec(name="x", translations={"ar": "ذهبي"}), ["translations"])
    assert [v.field for v in raised.value.violations] == ["tier.translations.ar"]


# -- changing the set --------------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.heard: list[list[str]] = []

    async def tiers_changing(self, merchant_id: UUID, tier_ids: object, bump_cache_epoch: object) -> object:
        ids = list(tier_ids)  # type: ignore[call-overload]

        async def after_commit() -> None:
            self.heard.append(ids)

        return after_commit


async def test_changing_the_set_is_validated_versioned_announced_and_invalidates_every_tier() -> None:
    db = FakeUnitOfWork()
    listener = Listener()
    service = TierService(db, [listener])  # type: ignore[list-item]
    merchant = db.provision()
    assert await service.locales(merchant) == MerchantLocales(DEFAULT_LOCALES, 0, None)
    await service.create(merchant, "gold", TierSpec(name="Gold", translations={"he": "זהב"}))
    await service.create(merchant, "silver", TierSpec(name="Silver"))
    listener.heard.clear()

    with pytest.raises(InvalidArgument) as raised:
        await service.update_locales(merchant, ["en", "zh-TW", "xx", "en"])
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("locales[1]", "unknown locale 'zh-TW'; CLDR calls it 'zh-Hant-TW'"),
        ("locales[2]", "unknown locale 'xx': CLDR has no data for it"),
        ("locales[3]", "duplicate locale 'en'"),
    ]
    with pytest.raises(InvalidArgument):
        await service.update_locales(merchant, [])
    with pytest.raises(FailedPrecondition, match="he still hold text: gold name"):
        await service.update_locales(merchant, ["en", "ar"])

    context.actor.set("admin-1")
    stored, changed = await service.update_locales(merchant, ["en", "he", "zh-Hant-TW"], expected_version=0)
    assert (stored.locales, stored.version, changed) == (("en", "he", "zh-Hant-TW"), 1, True)
    assert listener.heard == [["gold", "silver"]]  # every cached answer of the merchant goes
    [event] = [m for m in db.events(topics.VIP_TIER_UPDATED) if m.payload["tier_id"] == LOCALES_EVENT_TIER_ID]
    assert event.payload["updated_fields"] == ["locales"]
    assert event.payload["actor"] == "admin-1"

    with pytest.raises(VersionConflict):
        await service.update_locales(merchant, ["en", "he"], expected_version=7)
    same, changed = await service.update_locales(merchant, ["en", "he", "zh-Hant-TW"])
    assert (same.version, changed) == (1, False)
    assert len(listener.heard) == 1


async def test_the_cldr_locales_that_cannot_be_enabled_are_refused_naming_the_field() -> None:
    """Of CLDR's locales only these six cannot be enabled: the four with a variant subtag (a stored
    tag is language[-Script][-REGION]) and Sunuwar, whose letters this Python's Unicode data lacks
    (no name in it could pass the script check)."""
    assert sorted(t for t in CLDR_LOCALES if t not in STORABLE) == [
        "be-TARASK",
        "ca-ES-VALENCIA",
        "el-POLYTON",
        "en-US-POSIX",
        "suz-Sunu",
        "suz-Sunu-NP",
    ]
    db = FakeUnitOfWork()
    service = TierService(db)
    merchant = db.provision()
    with pytest.raises(InvalidArgument) as raised:
        await service.update_locales(merchant, ["en", "ca-ES-VALENCIA"])
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("locales[1]", "locales with a variant subtag are not supported")
    ]
    with pytest.raises(InvalidArgument) as raised:
        await service.update_locales(merchant, ["en", "fr", "suz-Sunu"])
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("locales[2]", "no letter of 'suz-Sunu''s script is known to this server")
    ]
    assert await service.locales(merchant) == MerchantLocales()


def test_the_database_knows_the_locales_the_service_knows() -> None:
    """Migration 0042 lists the locales a merchant can enable; Babel's data must give the same list
    (a Babel upgrade that changes it needs a migration redefining campaign_locale_supported)."""
    sql = (resources.files("campaign_service.migrations") / "0042_cldr_locales.sql").read_text(encoding="utf-8")
    listed = sql.split("ANY ('{", 1)[1].split("}'", 1)[0]
    assert sorted(t.strip() for t in listed.split(",")) == STORABLE


def test_locales_message_describes_each_locale() -> None:
    msg = locales_to_proto(uuid.UUID(int=1), MerchantLocales(("en", "ar", "zh-Hant-TW"), 3, datetime.now(UTC)))
    assert [(d.locale, d.direction, d.script) for d in msg.details] == [
        ("en", "ltr", "Latn"),
        ("ar", "rtl", "Arab"),
        ("zh-Hant-TW", "ltr", "Hant"),
    ]
    assert msg.details[1].native_name == "العربية"
    assert msg.details[2].english_name == "Chinese (Traditional, Taiwan)"


# -- the translation report --------------------------------------------------------------------


def _tier(tier_id: str, spec: TierSpec) -> VIPTier:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return VIPTier(uuid.uuid4(), UUID(int=1), tier_id, spec, 1, now, now)


SAMPLE = {"en": "Gold", "ar": "ذهبي", "he": "זהב", "fr": "Or", "zh-Hant": "黃金"}


@st.composite
def programmes(draw: st.DrawFn) -> tuple[list[VIPTier], set[tuple[str, str, str]]]:
    """Tiers with random names and perk labels over SAMPLE's locales, and the (locale, tier_id,
    perk_code) texts that are missing - known by construction."""
    tiers, missing = [], set()
    for i in range(draw(st.integers(1, 6))):
        default = draw(st.sampled_from(sorted(SAMPLE)))
        have = draw(st.sets(st.sampled_from(sorted(SAMPLE)))) | {default}
        perks = []
        for j in range(draw(st.integers(0, 3))):
            labels = draw(st.sets(st.sampled_from(sorted(SAMPLE)), min_size=1))
            perks.append(Perk(f"p{j}", {k: SAMPLE[k] + str(j) for k in sorted(labels)}))
            missing |= {(loc, f"t{i}", f"p{j}") for loc in SAMPLE if loc not in labels}
        spec = TierSpec(
            name=SAMPLE[default],
            locale=default,
            translations={k: SAMPLE[k] for k in have - {default}},
            benefits=Benefits(custom_perks=tuple(perks)),
        )
        tiers.append(_tier(f"t{i}", spec))
        missing |= {(loc, f"t{i}", "") for loc in SAMPLE if loc not in have}
    return tiers, missing


@given(programmes())
def test_report_finds_exactly_the_known_gaps(programme: tuple[list[VIPTier], set[tuple[str, str, str]]]) -> None:
    tiers, missing = programme
    entries = report(tiers, list(SAMPLE))
    found = {(e.locale, g.tier_id, g.perk_code) for e in entries for g in e.gaps}
    assert found == missing
    for entry in entries:
        assert entry.present + len(entry.gaps) == entry.total
        assert entry.total == sum(1 + len(t.spec.benefits.custom_perks) for t in tiers)
        for gap in entry.gaps:  # the fallback is what a reader of the locale is shown
            tier = next(t for t in tiers if t.tier_id == gap.tier_id)
            shown = tier.display(entry.locale)
            got = shown.locale if not gap.perk_code else next(p for p in shown.perks if p.code == gap.perk_code).locale
            assert gap.fallback_locale == got != entry.locale


def test_a_copied_default_name_in_another_script_counts_as_missing() -> None:
    copied = _tier("gold", TierSpec(name="Gold", translations={"ar": "Gold", "fr": "Gold"}))
    entries = {e.locale: e for e in report([copied], ["en", "ar", "fr"])}
    assert [(g.tier_id, g.fallback_locale, g.copied) for g in entries["ar"].gaps] == [("gold", "en", True)]
    assert entries["fr"].gaps == ()  # same script: "Gold" may well be the French name
    assert (entries["ar"].fraction, entries["en"].fraction) == (0.0, 1.0)
    msg = report_to_proto(UUID(int=1), MerchantLocales(("en", "ar", "fr"), 2), list(entries.values()))
    assert [(e.locale, e.percent_complete, e.direction) for e in msg.locales] == [
        ("en", 100.0, "ltr"),
        ("ar", 0.0, "rtl"),
        ("fr", 100.0, "ltr"),
    ]


async def test_the_same_han_name_in_chinese_and_japanese_is_no_copy() -> None:
    """Jpan, Hans and Hant are different script codes but all write Han: an identical name may be
    the translation. Latin text in `ja` is still a copy."""
    tier = _tier(
        "gold", TierSpec(name="黄金", locale="zh", translations={"ja": "黄金", "zh-Hant": "黄金", "ko": "黄金"})
    )
    entries = {e.locale: e for e in report([tier], ["zh", "ja", "zh-Hant", "ko"])}
    assert (entries["ja"].gaps, entries["zh-Hant"].gaps, entries["ko"].gaps) == ((), (), ())
    latin = _tier("gold", TierSpec(name="Gold", translations={"ja": "Gold"}))
    [gap] = report([latin], ["ja"])[0].gaps
    assert (gap.copied, gap.fallback_locale) == (True, "en")


def test_a_copied_perk_label_in_another_script_counts_as_missing() -> None:
    perks = Benefits(custom_perks=(Perk("lounge", {"en": "Lounge", "he": "Lounge", "ar": "صالة"}),))
    tier = _tier("gold", TierSpec(name="Gold", translations={"ar": "ذهبي", "he": "זהב"}, benefits=perks))
    entries = {e.locale: e for e in report([tier], ["en", "ar", "he"])}
    assert [(g.perk_code, g.fallback_locale, g.copied) for g in entries["he"].gaps] == [("lounge", "en", True)]
    assert (entries["he"].present, entries["he"].total) == (1, 2)
    assert entries["ar"].gaps == ()


async def test_report_metric_is_per_locale_not_per_merchant() -> None:
    db = FakeUnitOfWork()
    service = TierService(db)
    merchants = [db.provision(), db.provision()]
    for merchant in merchants:
        await service.create(merchant, "gold", TierSpec(name="Gold", translations={"ar": "ذهبي"}))

    def count(locale: str) -> float:
        value = REGISTRY.get_sample_value("campaign_translation_complete_ratio_count", {"locale": locale})
        return value or 0.0

    before = count("he")
    for merchant in merchants:
        _, entries = await service.translation_report(merchant)
        assert [(e.locale, e.fraction) for e in entries] == [("en", 1.0), ("ar", 1.0), ("he", 0.0)]
    assert count("he") == before + 2
    labels = {
        tuple(sorted(s.labels))
        for m in REGISTRY.collect()
        if m.name == "campaign_translation_complete_ratio"
        for s in m.samples
    }
    assert labels <= {("locale",), ("le", "locale")}
