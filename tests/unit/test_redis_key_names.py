"""The Redis key names: the formats of the plan. Another instance (or an operator's script) finds
the same keys only if these strings never drift."""

from __future__ import annotations

import importlib
import uuid
from types import ModuleType

from campaign_service.service.ports import ViewKey


def _key_module() -> ModuleType:
    # keys.py is being renamed redis_keys.py (issue 11.6); either name is the module under test.
    try:
        return importlib.import_module("campaign_service.redis_keys")
    except ModuleNotFoundError:
        return importlib.import_module("campaign_service.keys")


keys = _key_module()
M = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def test_cache_keys() -> None:
    assert keys.tier_cache(M, "gold") == "cache:{123e4567-e89b-12d3-a456-426614174000}:gold"
    assert keys.tier_list_cache(M) == "cache:{123e4567-e89b-12d3-a456-426614174000}:tiers"


def test_view_slots() -> None:
    assert keys.view_slot(ViewKey(M, "gold", "ar")) == (keys.tier_cache(M, "gold"), "tier:ar")
    assert keys.view_slot(ViewKey(M, "gold", "")) == (keys.tier_cache(M, "gold"), "tier:")
    assert keys.view_slot(ViewKey(M, None, "he")) == (keys.tier_list_cache(M), "list:he")
    # a tier named `tiers` shares the list's key, never its field
    tier_key, tier_field = keys.view_slot(ViewKey(M, "tiers", "en"))
    list_key, list_field = keys.view_slot(ViewKey(M, None, "en"))
    assert tier_key == list_key
    assert tier_field != list_field


def test_a_change_invalidates_its_tiers_and_the_list_once_each() -> None:
    gold, silver, listed = keys.tier_cache(M, "gold"), keys.tier_cache(M, "silver"), keys.tier_list_cache(M)
    assert keys.invalidated_by(M, ["gold", "silver", "gold"]) == [gold, silver, listed]
    assert keys.invalidated_by(M, iter(["gold"])) == [gold, listed]
    assert keys.invalidated_by(M, []) == [listed]
    assert keys.invalidated_by(M, ["tiers"]) == [listed]


def test_rate_limit_and_processed_keys() -> None:
    event = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert keys.rate_limit(M) == "rate_limit:{123e4567-e89b-12d3-a456-426614174000}:campaign"
    assert keys.processed(M, event) == (
        "processed:{123e4567-e89b-12d3-a456-426614174000}:00000000-0000-4000-8000-000000000001"
    )


def test_every_key_of_a_merchant_lies_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    event = uuid.UUID("00000000-0000-4000-8000-000000000001")
    names = [*keys.invalidated_by(M, ["gold", "silver"]), keys.rate_limit(M), keys.processed(M, event)]
    assert {key_slot(n.encode()) for n in names} == {key_slot(str(M).encode())}
    other = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert key_slot(keys.tier_cache(other, "gold").encode()) == key_slot(str(other).encode())


def test_epoch_records() -> None:
    from redis.crc import key_slot

    assert keys.cache_epoch(None) == "cache:epoch"
    assert keys.cache_epoch("17") == "cache:epoch:{17}"
    assert key_slot(keys.cache_epoch("17").encode()) == key_slot(b"17")
