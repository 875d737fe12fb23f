"""Token verification for the configured mode (Auth Service, JWKS file or URL, public key, or the
embedded default's own key pair), behind the verified-token cache."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import structlog

from campaign_service.adapters.auth.auth_service import AuthServiceVerifier
from campaign_service.adapters.auth.cache import CachingVerifier
from campaign_service.adapters.auth.dev import DEV_ALGORITHM, DEV_ISSUER, dev_key_set, dev_signing_key
from campaign_service.adapters.auth.jwt_keys import FileKeys, StaticKeys, UrlKeys, parse_jwks, parse_pem_public_key
from campaign_service.adapters.auth.local import ClaimRules, LocalJwtVerifier
from campaign_service.config import AuthMode, ConfigError, Settings
from campaign_service.service.ports import TokenVerifier
from campaign_service.wiring import lifetime

log = structlog.get_logger(__name__)


def file_keys(path: Path, variable: str, kind: str) -> FileKeys:
    try:
        return FileKeys(path, parse_jwks if kind == "jwks" else parse_pem_public_key, kind)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{variable}: cannot use {path} ({type(exc).__name__})") from None


@contextlib.asynccontextmanager
async def verifier(settings: Settings, mode: AuthMode) -> AsyncIterator[TokenVerifier]:
    """The verifier for `mode`; its Auth Service channel or key source, and the task that keeps
    the keys current, live while the block runs."""
    async with contextlib.AsyncExitStack() as stack:
        if mode == "auth_service":
            assert settings.auth_host is not None
            channel = grpc.aio.insecure_channel(settings.auth_host)
            stack.push_async_callback(lifetime.bounded, "auth service channel", channel.close)
            inner = AuthServiceVerifier(channel, settings.jwt_audience, settings.auth_timeout_s)
            yield CachingVerifier(inner, settings.auth_cache_size, settings.auth_cache_max_ttl_s)
            return
        rules = ClaimRules(
            settings.algorithms,
            settings.jwt_audience,
            settings.jwt_issuer,
            settings.jwt_leeway_s,
            settings.jwt_merchant_claim,
        )
        keys: FileKeys | UrlKeys | StaticKeys
        if mode == "jwks_file":
            assert settings.jwt_jwks_file is not None
            keys = file_keys(settings.jwt_jwks_file, "CAMPAIGN_JWT_JWKS_FILE", "jwks")
        elif mode == "public_key":
            assert settings.jwt_public_key_file is not None
            keys = file_keys(settings.jwt_public_key_file, "CAMPAIGN_JWT_PUBLIC_KEY_FILE", "public_key")
        elif mode == "jwks_url":
            assert settings.jwt_jwks_url is not None
            keys = UrlKeys(settings.jwt_jwks_url, settings.jwks_refresh_s, settings.auth_timeout_s)
            stack.push_async_callback(lifetime.bounded, "jwks url client", keys.close)
            if not await keys.fetch():
                log.warning("JWKS URL not reachable at start; requests fail with UNAVAILABLE until it is")
        else:
            keys = StaticKeys(dev_key_set(dev_signing_key(settings.data_dir)))
            log.info("embedded default: tokens from `campaign-service dev-token --merchant <uuid>` (same data dir)")
            rules = ClaimRules((DEV_ALGORITHM,), settings.jwt_audience, DEV_ISSUER, settings.jwt_leeway_s)
        cache = CachingVerifier(LocalJwtVerifier(keys, rules), settings.auth_cache_size, settings.auth_cache_max_ttl_s)
        keys.subscribe(cache.clear)
        await stack.enter_async_context(lifetime.background("token-keys", keys.run()))
        yield cache
