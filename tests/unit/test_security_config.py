"""Security settings: which verifier a configuration gets, and one clear error per bad value."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import pytest

from campaign_service.cli import _dev_token
from campaign_service.config import ConfigError, Settings, load_settings
from campaign_service.wiring.auth import file_keys
from campaign_service.wiring.servers import tls_credentials


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CAMPAIGN_") or key in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(tmp_path))


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "dev"),
        ({"AUTH_HOST": "auth:50051"}, "auth_service"),
        ({"CAMPAIGN_DB_HOST": "db", "AUTH_HOST": "[::1]:50051"}, "auth_service"),
        ({"CAMPAIGN_DB_HOST": "db", "CAMPAIGN_JWT_JWKS_FILE": "/k.json"}, "jwks_file"),
        ({"CAMPAIGN_DB_DSN": "postgresql://x", "CAMPAIGN_JWT_JWKS_URL": "https://idp/jwks"}, "jwks_url"),
        ({"CAMPAIGN_JWT_PUBLIC_KEY_FILE": "/k.pem"}, "public_key"),
        # a local key source wins over AUTH_HOST (SPEC: local when configured, else the Auth Service)
        ({"AUTH_HOST": "auth:1", "CAMPAIGN_JWT_JWKS_FILE": "/k.json"}, "jwks_file"),
    ],
)
def test_auth_mode(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str) -> None:
    assert settings(monkeypatch, **env).auth_mode() == mode


@pytest.mark.parametrize("db", [{"CAMPAIGN_DB_HOST": "db"}, {"CAMPAIGN_DB_DSN": "postgresql://app@db/campaign"}])
def test_production_without_a_verifier_is_refused(monkeypatch: pytest.MonkeyPatch, db: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^AUTH_HOST: a configured database means production"):
        settings(monkeypatch, **db).auth_mode()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CAMPAIGN_JWT_ALGORITHMS": "HS256"}, "CAMPAIGN_JWT_ALGORITHMS"),
        ({"CAMPAIGN_JWT_ALGORITHMS": "RS256,none"}, "CAMPAIGN_JWT_ALGORITHMS"),
        ({"CAMPAIGN_JWT_ALGORITHMS": " , "}, "CAMPAIGN_JWT_ALGORITHMS"),
        ({"CAMPAIGN_JWT_JWKS_FILE": "/a", "CAMPAIGN_JWT_PUBLIC_KEY_FILE": "/b"}, "CAMPAIGN_JWT_PUBLIC_KEY_FILE"),
        ({"CAMPAIGN_JWT_JWKS_URL": "file:///etc/passwd"}, "CAMPAIGN_JWT_JWKS_URL"),
        ({"CAMPAIGN_JWT_LEEWAY_S": "3600"}, "CAMPAIGN_JWT_LEEWAY_S"),
        ({"CAMPAIGN_JWT_AUDIENCE": ""}, "CAMPAIGN_JWT_AUDIENCE"),
        ({"CAMPAIGN_AUTH_CACHE_SIZE": "-1"}, "CAMPAIGN_AUTH_CACHE_SIZE"),
        ({"CAMPAIGN_TLS_CERT_FILE": "/a"}, "CAMPAIGN_TLS_KEY_FILE"),
        ({"CAMPAIGN_TLS_KEY_FILE": "/a"}, "CAMPAIGN_TLS_KEY_FILE"),
        ({"CAMPAIGN_TLS_CLIENT_CA_FILE": "/a"}, "CAMPAIGN_TLS_CLIENT_CA_FILE"),
        ({"AUTH_HOST": "no port"}, "AUTH_HOST"),
        ({"AUTH_HOST": "http://auth:1"}, "AUTH_HOST"),
    ],
)
def test_bad_security_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as err:
        settings(monkeypatch, **env)
    assert str(err.value).startswith(f"{variable}: "), str(err.value)
    assert "\n" not in str(err.value)


def test_unusable_key_and_certificate_files_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "garbage").write_text("{ not json")
    with pytest.raises(ConfigError, match=r"^CAMPAIGN_JWT_JWKS_FILE: cannot use"):
        file_keys(tmp_path / "missing.json", "CAMPAIGN_JWT_JWKS_FILE", "jwks")
    with pytest.raises(ConfigError, match=r"^CAMPAIGN_JWT_PUBLIC_KEY_FILE: cannot use"):
        file_keys(tmp_path / "garbage", "CAMPAIGN_JWT_PUBLIC_KEY_FILE", "public_key")
    s = settings(
        monkeypatch, CAMPAIGN_TLS_CERT_FILE=str(tmp_path / "garbage"), CAMPAIGN_TLS_KEY_FILE=str(tmp_path / "garbage")
    )
    with pytest.raises(ConfigError, match=r"^CAMPAIGN_TLS_CERT_FILE: cannot use the TLS files"):
        tls_credentials(s)


@pytest.mark.parametrize(
    "env",
    [
        {"CAMPAIGN_DB_HOST": "127.0.0.1"},
        {"CAMPAIGN_DB_DSN": "postgresql://campaign_app@127.0.0.1/x"},
        {"AUTH_HOST": "127.0.0.1:1"},
        {"CAMPAIGN_JWT_JWKS_URL": "http://127.0.0.1:1/jwks.json"},
        {"CAMPAIGN_JWT_PUBLIC_KEY_FILE": "/k.pem"},
    ],
)
async def test_dev_token_mints_only_on_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]
) -> None:
    args = argparse.Namespace(merchant=uuid.uuid4(), scope=None, subject="dev", ttl=60)
    with pytest.raises(ConfigError, match="dev-token works only on the embedded default"):
        await _dev_token(settings(monkeypatch, **env), args)
    assert not (tmp_path / "auth").exists()


async def test_dev_token_on_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import jwt

    merchant = uuid.uuid4()
    await _dev_token(
        settings(monkeypatch), argparse.Namespace(merchant=merchant, scope=["tiers:read"], subject="me", ttl=60)
    )
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert (claims["merchant_id"], claims["scope"], claims["sub"], claims["exp"] - claims["iat"]) == (
        str(merchant),
        "tiers:read",
        "me",
        60,
    )
    assert (tmp_path / "auth" / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600
