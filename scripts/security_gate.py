"""Security gates run by scripts/test: bandit on src/ and pip-audit on the locked dependencies.

    python scripts/security_gate.py bandit   # any finding not listed in security-accepted.toml fails
    python scripts/security_gate.py audit    # any known vulnerability not listed there fails

Both fail on an entry of security-accepted.toml that no longer matches anything (delete it), so
the list stays a true account of what was accepted and why.

The audit checks every package of uv.lock (runtime and dev: the dev tools run in CI too) through
pip-audit against PyPI's vulnerability data, the same host the packages come from. When that data
cannot be reached (probed first with one request to the per-version JSON API pip-audit uses; if
it were not probed, pip-audit would skip every package and say "No known vulnerabilities
found"), or pip-audit skips packages anyway, the gate says so in capitals and, only when
CAMPAIGN_AUDIT_REQUIRED=1 (set by the CI workflow), fails; on a developer machine without that
access it passes with the warning. `--from-json FILE` reads a saved report instead of running the
tool (tests/unit/test_security_gate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = ROOT / "security-accepted.toml"
BANDIT_TARGET = "src"
BANDIT_EXCLUDE = "src/campaign_service/api/gen"  # protoc output


@dataclass(frozen=True)
class Finding:
    test: str
    path: str
    line: int
    source: str  # the flagged line, stripped
    text: str

    def entry(self) -> str:
        """A ready-to-paste entry for security-accepted.toml."""
        fragment = self.source.split("  #")[0].strip()
        # A TOML literal string cannot escape a quote: a fragment holding one goes in triple quotes.
        quote = "'''" if "'" in fragment else "'"
        return (
            f"[[bandit]]\ntest = \"{self.test}\"\npath = \"{self.path}\"\ncode = {quote}{fragment}{quote}\n"
            f"reason = \"TODO: why this is safe\"  # {self.text}\n"
        )


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _uv() -> str:
    return shutil.which("uv") or str(Path.home() / ".local/bin/uv")  # where scripts/lib/python.sh puts it


def _load(section: str, path: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = tomllib.loads(path.read_text()).get(section, [])
    for e in entries:
        if not str(e.get("reason", "")).strip() or str(e["reason"]).startswith("TODO"):
            raise SystemExit(f"{path.name}: [[{section}]] entry without a reason: {e}")
    return entries


def _bandit_findings(report: dict[str, Any], root: Path) -> list[Finding]:
    out = []
    for r in report.get("results", []):
        rel = Path(r["filename"])
        rel_s = str(rel.relative_to(root) if rel.is_absolute() else rel)
        lines = (root / rel_s).read_text().splitlines()
        n = int(r["line_number"])
        source = lines[n - 1].strip() if 0 < n <= len(lines) else ""
        out.append(Finding(r["test_id"], rel_s, n, source, r["issue_text"]))
    return out


def bandit(report_file: Path | None, accepted_file: Path, root: Path) -> int:
    if report_file is None:
        proc = subprocess.run(  # noqa: S603 - a fixed argv of a locked tool
            [_bin("bandit"), "-r", BANDIT_TARGET, "-x", BANDIT_EXCLUDE, "-f", "json", "-q"],
            cwd=root, capture_output=True, text=True, check=False,
        )
        if proc.returncode not in (0, 1) or not proc.stdout.strip():  # 1 = findings
            print(proc.stderr, file=sys.stderr)
            print(f"bandit failed to run (exit {proc.returncode})", file=sys.stderr)
            return 2
        report = json.loads(proc.stdout)
    else:
        report = json.loads(report_file.read_text())
    if report.get("errors"):
        print(f"bandit could not scan: {report['errors']}", file=sys.stderr)
        return 2
    entries = _load("bandit", accepted_file)
    used = [False] * len(entries)
    unlisted, accepted = [], 0
    for f in _bandit_findings(report, root):
        hit = next(
            (i for i, e in enumerate(entries)
             if e["test"] == f.test and e["path"] == f.path and e["code"] in f.source),
            None,
        )
        if hit is None:
            unlisted.append(f)
        else:
            used[hit] = True
            accepted += 1
    stale = [e for e, u in zip(entries, used, strict=True) if not u]
    for f in unlisted:
        print(f"bandit: {f.path}:{f.line}: {f.test} {f.text}\n    {f.source}", file=sys.stderr)
    if unlisted:
        print("\nFix these, or list each in security-accepted.toml with a reason:\n", file=sys.stderr)
        print("\n".join(f.entry() for f in unlisted), file=sys.stderr)
    for e in stale:
        print(f"bandit: stale entry in {accepted_file.name} (no such finding now; delete it): {e}", file=sys.stderr)
    print(f"bandit: {accepted} finding(s) accepted by {sum(used)} listed reason(s), {len(unlisted)} unlisted, "
          f"{len(stale)} stale")
    return 1 if unlisted or stale else 0


def _probe(req: Path) -> str:
    """'' if PyPI answers the per-version JSON API pip-audit queries, else why not. One request
    (10 s bound) instead of pip-audit's one per package, each with its own timeout."""
    first = next(line for line in req.read_text().splitlines() if "==" in line and not line.startswith("#"))
    name, version = first.split(";")[0].strip(" \\").split("==")
    url = f"https://pypi.org/pypi/{name}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=10):
            return ""
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


def _pip_audit_report(root: Path) -> tuple[dict[str, Any] | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        req, out = Path(tmp) / "requirements.txt", Path(tmp) / "audit.json"
        subprocess.run(  # noqa: S603 - a fixed argv of a locked tool
            [_uv(), "export", "--frozen", "--format", "requirements-txt", "--all-groups",
             "--no-emit-project", "--quiet", "-o", str(req)],
            cwd=root, check=True,
        )
        unreachable = _probe(req)
        if unreachable:
            return None, unreachable
        proc = subprocess.run(  # noqa: S603 - a fixed argv of a locked tool
            [_bin("pip-audit"), "-r", str(req), "--disable-pip", "--no-deps", "--progress-spinner", "off",
             "-f", "json", "-o", str(out)],
            cwd=root, capture_output=True, text=True, check=False,
        )
        if not out.exists() or not out.read_text().strip():
            tail = "\n".join(proc.stderr.strip().splitlines()[-3:])
            return None, tail
        report: dict[str, Any] = json.loads(out.read_text())
        return report, ""


def audit(report_file: Path | None, accepted_file: Path, root: Path, required: bool) -> int:
    if report_file is None:
        report, error = _pip_audit_report(root)
    else:
        report, error = json.loads(report_file.read_text()), ""
    entries = _load("pip-audit", accepted_file)
    if report is None:
        print(f"pip-audit: VULNERABILITY DATABASE NOT REACHABLE, NOTHING AUDITED: {error}", file=sys.stderr)
        if not required:
            print("pip-audit: not failing the run here (CAMPAIGN_AUDIT_REQUIRED is not 1); CI sets it.",
                  file=sys.stderr)
        return 1 if required else 0
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    audited = [d for d in deps if "skip_reason" not in d]
    used = [False] * len(entries)
    unlisted = []
    for d in audited:
        for v in d.get("vulns", []):
            ids = {v["id"], *v.get("aliases", [])}
            hit = next(
                (i for i, e in enumerate(entries) if e["package"] == d["name"] and e["id"] in ids), None
            )
            if hit is None:
                unlisted.append((d, v))
            else:
                used[hit] = True
    for d, v in unlisted:
        fix = ", ".join(v.get("fix_versions", [])) or "none yet"
        print(f"pip-audit: {d['name']} {d['version']}: {v['id']} (fixed in: {fix})", file=sys.stderr)
    if unlisted:
        print("Upgrade (uv lock --upgrade-package NAME), or list it in security-accepted.toml as\n"
              '[[pip-audit]] package = "..." id = "..." reason = "...".', file=sys.stderr)
    # An entry is stale only if its package was audited and the vulnerability is gone.
    audited_names = {d["name"] for d in audited}
    stale = [e for e, u in zip(entries, used, strict=True) if not u and e["package"] in audited_names]
    for e in stale:
        print(f"pip-audit: stale entry in {accepted_file.name} (no such vulnerability now; delete it): {e}",
              file=sys.stderr)
    failed = bool(unlisted or stale)
    if skipped:
        names = ", ".join(d["name"] for d in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        what = "VULNERABILITY DATABASE NOT REACHABLE" if not audited else "SOME PACKAGES NOT AUDITED"
        print(f"pip-audit: {what}: {len(skipped)} of {len(deps)} packages could not be checked ({names}); "
              f"first reason: {skipped[0]['skip_reason']}", file=sys.stderr)
        if required:
            failed = True
        else:
            print("pip-audit: not failing the run here (CAMPAIGN_AUDIT_REQUIRED is not 1); CI sets it.",
                  file=sys.stderr)
    print(f"pip-audit: {len(audited)} of {len(deps)} packages audited, {sum(used)} accepted vulnerability(ies), "
          f"{len(unlisted)} unlisted, {len(stale)} stale")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gate", choices=["bandit", "audit"])
    parser.add_argument("--from-json", type=Path, help="a saved bandit/pip-audit JSON report")
    parser.add_argument("--accepted", type=Path, default=ACCEPTED)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.gate == "bandit":
        return bandit(args.from_json, args.accepted, args.root)
    return audit(args.from_json, args.accepted, args.root, os.environ.get("CAMPAIGN_AUDIT_REQUIRED") == "1")


if __name__ == "__main__":
    sys.exit(main())
