"""Which cache and limit a configuration gets, and the errors that name the variable."""

from __future__ import annotations

import pytest

from campaign_service.config import ConfigError, Settings, load_settings


@pytest.mark.parametrize(
    ("values", "backend"),
    [
        ({"REDIS_HOST": "127.0.0.1"}, "redis"),
        ({}, "memory"),  # the embedded database: one process
        ({"CAMPAIGN_DB_HOST": "db"}, "off"),  # several instances and no shared cache: none
        ({"CAMPAIGN_DB_HOST": "db", "cache": "memory"}, "memory"),
        ({"REDIS_HOST": "127.0.0.1", "cache": "off"}, "off"),
    ],
)
def test_cache_backend(values: dict[str, str], backend: str) -> None:
    assert Settings.model_validate(values).cache_backend == backend


def test_redis_cache_needs_redis_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_CACHE", "redis")
    with pytest.raises(ConfigError, match="REDIS_HOST"):
        load_settings()


def test_bad_rate_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_RATE_LIMIT_REQUESTS", "-1")
    with pytest.raises(ConfigError, match="CAMPAIGN_RATE_LIMIT_REQUESTS"):
        load_settings()


def test_defaults_are_the_plans() -> None:
    s = Settings.model_validate({})
    assert (s.cache_ttl_s, s.rate_limit_requests, s.rate_limit_window_ms, s.redis_port) == (3600, 100, 1000, 6380)
