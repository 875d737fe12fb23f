"""scripts/security_gate.py: a finding or vulnerability fails unless listed with a reason, a stale
entry fails, and an unreachable vulnerability database is said so (and fails only where required)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GATE = Path(__file__).resolve().parents[2] / "scripts" / "security_gate.py"


def _gate(
    tmp_path: Path, gate: str, report: dict[str, Any], accepted: str, *, required: bool = False
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "accepted.toml").write_text(accepted)
    env = {**os.environ, "CAMPAIGN_AUDIT_REQUIRED": "1" if required else "0"}
    return subprocess.run(
        [
            sys.executable,
            str(GATE),
            gate,
            "--from-json",
            str(tmp_path / "report.json"),
            "--accepted",
            str(tmp_path / "accepted.toml"),
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _bandit_report(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("import random\n\nJITTER = random.uniform(0.8, 1.2)\n")
    return {
        "errors": [],
        "results": [
            {"filename": "src/m.py", "line_number": 3, "test_id": "B311", "issue_text": "pseudo-random"},
        ],
    }


LISTED_B311 = '[[bandit]]\ntest = "B311"\npath = "src/m.py"\ncode = "random.uniform(0.8, 1.2)"\nreason = "jitter"\n'


def test_an_unlisted_bandit_finding_fails_and_prints_an_entry_to_paste(tmp_path: Path) -> None:
    result = _gate(tmp_path, "bandit", _bandit_report(tmp_path), "")
    assert result.returncode == 1
    assert 'test = "B311"' in result.stderr
    assert 'path = "src/m.py"' in result.stderr


def test_a_listed_bandit_finding_passes(tmp_path: Path) -> None:
    result = _gate(tmp_path, "bandit", _bandit_report(tmp_path), LISTED_B311)
    assert result.returncode == 0, result.stderr
    assert "1 finding(s) accepted" in result.stdout


def test_an_entry_matching_no_finding_is_stale_and_fails(tmp_path: Path) -> None:
    result = _gate(tmp_path, "bandit", {"errors": [], "results": []}, LISTED_B311)
    assert result.returncode == 1
    assert "stale entry" in result.stderr


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    result = _gate(tmp_path, "bandit", _bandit_report(tmp_path), LISTED_B311.replace('reason = "jitter"\n', ""))
    assert result.returncode != 0
    assert "without a reason" in result.stderr


def _audit_report(vulns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dependencies": [
            {"name": "somepkg", "version": "1.0", "vulns": vulns},
            {"name": "otherpkg", "version": "2.0", "vulns": []},
        ]
    }


VULN = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-1"], "fix_versions": ["1.1"], "description": "x"}


def test_an_unlisted_vulnerability_fails(tmp_path: Path) -> None:
    result = _gate(tmp_path, "audit", _audit_report([VULN]), "")
    assert result.returncode == 1
    assert "somepkg 1.0: PYSEC-2099-1 (fixed in: 1.1)" in result.stderr


def test_a_vulnerability_listed_by_an_alias_passes(tmp_path: Path) -> None:
    accepted = '[[pip-audit]]\npackage = "somepkg"\nid = "CVE-2099-1"\nreason = "dev tool, path not used"\n'
    result = _gate(tmp_path, "audit", _audit_report([VULN]), accepted, required=True)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 packages audited, 1 accepted" in result.stdout


def test_a_listed_vulnerability_that_is_gone_is_stale(tmp_path: Path) -> None:
    accepted = '[[pip-audit]]\npackage = "somepkg"\nid = "CVE-2099-1"\nreason = "dev tool, path not used"\n'
    result = _gate(tmp_path, "audit", _audit_report([]), accepted)
    assert result.returncode == 1
    assert "stale entry" in result.stderr


def test_an_unreachable_database_is_said_and_fails_only_where_required(tmp_path: Path) -> None:
    skipped = {
        "dependencies": [
            {"name": n, "skip_reason": f"Dependency not found on PyPI and could not be audited: {n} (1.0)"}
            for n in ("somepkg", "otherpkg")
        ]
    }
    here = _gate(tmp_path, "audit", skipped, "")
    assert here.returncode == 0
    assert "VULNERABILITY DATABASE NOT REACHABLE: 2 of 2 packages could not be checked" in here.stderr
    in_ci = _gate(tmp_path, "audit", skipped, "", required=True)
    assert in_ci.returncode == 1
    assert "VULNERABILITY DATABASE NOT REACHABLE" in in_ci.stderr


def test_the_printed_entry_for_a_line_with_quotes_is_valid_toml_that_accepts_the_finding(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    line = "sql = f\"SELECT {', '.join('p.' + c for c in COLUMNS.split(','))}\""
    (tmp_path / "src" / "q.py").write_text(f"COLUMNS = 'a,b'\n{line}\n")
    report = {
        "errors": [],
        "results": [
            {"filename": "src/q.py", "line_number": 2, "test_id": "B608", "issue_text": "sql"},
        ],
    }
    printed = _gate(tmp_path, "bandit", report, "").stderr
    entry = printed[printed.index("[[bandit]]") :].split("\n\n")[0].replace("TODO: why this is safe", "constant")
    result = _gate(tmp_path, "bandit", report, entry + "\n")
    assert result.returncode == 0, result.stderr
