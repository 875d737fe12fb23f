"""Identifier and tag checks match the whole string: Python's `$` also matches before a final
newline, which let `gold\\n` pass as a tier id (found by the hostile-input work)."""

from __future__ import annotations

import pytest

from campaign_service.domain.benefits import Benefits, Perk, benefits_violations
from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.locales import check_requested
from campaign_service.domain.tiers import check_tier_id


@pytest.mark.parametrize("value", ["gold\n", "gold\r\n", "\ngold"])
def test_tier_id(value: str) -> None:
    with pytest.raises(InvalidArgument, match="tier_id"):
        check_tier_id(value)


@pytest.mark.parametrize("value", ["en\n", "ar-SA\n"])
def test_requested_locale(value: str) -> None:
    with pytest.raises(InvalidArgument, match="locale"):
        check_requested(value, "locale")


def test_perk_code() -> None:
    violations = benefits_violations(Benefits(custom_perks=(Perk("gift\n", {"en": "Gift"}),)), "tier.benefits")
    assert [v.field for v in violations] == ["tier.benefits.custom_perks[0].code"]
