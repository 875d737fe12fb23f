"""A production configuration refuses to start without a token verifier and never mints
tokens; bad security settings fail with one line naming the variable. (The embedded default's
own key pair and `dev-token` are exercised in test_process.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import free_port


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAMPAIGN_") and k not in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST")
    }
    return {**env, **extra}


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campaign_service", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_production_configuration_without_a_verifier_refuses_to_start(database: Any, tmp_path: Path) -> None:
    env = clean_env(
        CAMPAIGN_DB_DSN=database.app_dsn,
        CAMPAIGN_DB_OWNER_DSN=database.owner_dsn,
        CAMPAIGN_RELAY_DB_DSN=database.relay_dsn,
        CAMPAIGN_DATA_DIR=str(tmp_path / "data"),
        CAMPAIGN_GRPC_PORT=str(free_port()),
        CAMPAIGN_HTTP_PORT=str(free_port()),
    )
    result = cli("serve", env=env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: AUTH_HOST: ")
    assert "CAMPAIGN_JWT_JWKS_FILE" in lines[0]
    assert not (tmp_path / "data").exists()  # no key pair made


def test_dev_token_is_refused_in_production_and_security_errors_are_one_line(tmp_path: Path) -> None:
    """The CLI surface; every variable and mode is covered in tests/unit/test_security_config.py."""
    minted = cli(
        "dev-token",
        "--merchant",
        str(uuid.uuid4()),
        env=clean_env(CAMPAIGN_DATA_DIR=str(tmp_path), CAMPAIGN_DB_HOST="h"),
    )
    assert (minted.returncode, minted.stdout) == (2, "")
    assert "dev-token works only on the embedded default" in minted.stderr
    assert not (tmp_path / "auth").exists()
    bad = cli("serve", env=clean_env(CAMPAIGN_DATA_DIR=str(tmp_path), CAMPAIGN_JWT_ALGORITHMS="HS256"))
    assert bad.returncode == 2
    assert bad.stderr.startswith("configuration error: CAMPAIGN_JWT_ALGORITHMS: ")
    assert bad.stderr.count("\n") == 1
