"""The words callers read: error messages and violation descriptions go into the gRPC status and
its BadRequest details, so a change to one is a change to the API."""

from __future__ import annotations

import uuid

import pytest

from campaign_service.domain.access import SCOPE_READ, Access, Principal, authorize
from campaign_service.domain.benefits import Benefits, Perk, benefits_violations
from campaign_service.domain.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from campaign_service.domain.locales import check_requested, enabled_violation
from campaign_service.domain.text import text_violations
from campaign_service.domain.tiers import TierSpec, check_mask, check_spec, check_tier_id


def violations_of(exc: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in exc.violations]


def test_domain_error_keeps_its_message() -> None:
    error = NotFound("tier 'gold' not found")
    assert error.message == "tier 'gold' not found"
    assert str(error) == "tier 'gold' not found"


def test_invalid_argument_message_lists_its_violations() -> None:
    error = InvalidArgument([FieldViolation("a", "bad"), FieldViolation("b.c", "worse")])
    assert error.message == str(error) == "a: bad; b.c: worse"
    assert InvalidArgument().message == "invalid argument"


def test_permission_denied_messages() -> None:
    merchant = uuid.uuid4()
    reader = Principal("svc", merchant, frozenset({SCOPE_READ}), 0.0)
    with pytest.raises(PermissionDenied) as raised:
        authorize(reader, uuid.uuid4(), Access.READ)
    assert raised.value.message == "the token is not valid for this merchant"
    with pytest.raises(PermissionDenied) as raised:
        authorize(reader, merchant, Access.WRITE)
    assert raised.value.message == "the token lacks the tiers:write scope"


def test_tier_id_message() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_tier_id("-x", "tier.tier_id")
    assert violations_of(raised.value) == [
        ("tier.tier_id", "must be 1-64 characters of a-z, 0-9, _ and -, starting with a letter or digit")
    ]


def test_mask_messages() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_mask([])
    assert violations_of(raised.value) == [("update_mask", "must list at least one field (or `*`)")]
    with pytest.raises(InvalidArgument) as raised:
        check_mask(["name", "v" * 70])
    assert violations_of(raised.value) == [
        (
            "update_mask",
            f"unknown or read-only field {'v' * 64!r}; allowed: name, locale, min_points, discount_percentage,"
            " free_shipping, exclusive_access, benefits, translations, is_default",
        )
    ]


def test_check_spec_names_fields_under_its_prefix() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_spec(TierSpec(name="Gold", min_points=-1), "update.")
    assert [v.field for v in raised.value.violations] == ["update.min_points"]
    assert check_spec(TierSpec(name="Gold")) == TierSpec(name="Gold")


def test_benefit_messages() -> None:
    [bonus] = benefits_violations(Benefits(bonus_points=-1), "b")
    assert (bonus.field, bonus.description) == ("b.bonus_points", "must be between 0 and 1000000000")
    [label] = benefits_violations(Benefits(custom_perks=(Perk("p", {"fr-CA-xxxxxxxx": "x"}),)), "b")
    assert (label.field, label.description) == (
        "b.custom_perks[0].label",
        "unknown locale 'fr-CA-xxxxxxxx': CLDR has no data for it",
    )
    [label] = benefits_violations(Benefits(custom_perks=(Perk("p", {"fr": "Salon"}),)), "b")
    assert label.description == "locale 'fr' is not enabled for this merchant; enabled: en, ar, he"


def test_locale_messages() -> None:
    assert enabled_violation("fr-CA-xxxxxxxx", ("en",)) == "unknown locale 'fr-CA-xxxxxxxx': CLDR has no data for it"
    assert enabled_violation("zh-TW", ("en",)) == "unknown locale 'zh-TW'; CLDR calls it 'zh-Hant-TW'"
    with pytest.raises(InvalidArgument) as raised:
        check_requested("not a tag", "locale")
    assert violations_of(raised.value) == [("locale", "not a well-formed BCP 47 language tag")]


def test_lone_surrogates_are_refused() -> None:
    [violation] = text_violations("Gold\ud800", "en", "f", 100)
    assert violation.description == "must not contain control, unassigned or private-use characters"
