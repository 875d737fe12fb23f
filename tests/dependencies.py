"""Chaos control of the dependencies scripts/test started: the *_kill / *_start_again functions of
scripts/lib/{postgres,redis,kafka}.sh on their state directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def dependency_sh(dependency: str, function: str, timeout_s: float = 120) -> None:
    """Runs e.g. `pg_kill "$CAMPAIGN_TEST_SERVICES_DIR/postgres"` from scripts/lib/postgres.sh
    (`dependency` names both the library and the state directory)."""
    state = os.environ.get("CAMPAIGN_TEST_SERVICES_DIR")
    assert state, "CAMPAIGN_TEST_SERVICES_DIR is not set: run through scripts/test"
    lib = REPO / "scripts" / "lib" / f"{dependency}.sh"
    done = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$1"; {function} "$2"', "_", lib, Path(state) / dependency],
        capture_output=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"{function} failed: {done.stderr.decode(errors='replace')[:2500]}"
