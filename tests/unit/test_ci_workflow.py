"""The CI workflow: valid for GitHub Actions (the schema check-jsonschema vendors), runs the same
command a developer runs, makes pip-audit's database mandatory, and publishes the SBOM."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc = dict(yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text()))
    doc["on"] = doc.pop(True)  # PyYAML reads the key `on` as YAML 1.1's boolean true; GitHub does not
    return doc


def _runs(workflow: dict[str, Any]) -> list[str]:
    return [str(step["run"]) for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_workflow_follows_the_github_workflow_schema(workflow: dict[str, Any]) -> None:
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("github-workflows.json").read_text()
    )
    jsonschema.validate(workflow, schema)


def test_ci_runs_scripts_test_through_ci_run(workflow: dict[str, Any]) -> None:
    assert ".ci/run" in _runs(workflow)
    ci_run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "exec scripts/test" in ci_run


def test_ci_runs_on_python_311_with_java_21(workflow: dict[str, Any]) -> None:
    (job,) = workflow["jobs"].values()
    assert job["container"].startswith("python:3.11-")
    java = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-java@")]
    assert [s["with"]["java-version"] for s in java] == ["21"]


def test_ci_requires_the_vulnerability_database(workflow: dict[str, Any]) -> None:
    (job,) = workflow["jobs"].values()
    assert job["env"]["CAMPAIGN_AUDIT_REQUIRED"] == "1"


def test_ci_builds_and_uploads_the_sbom(workflow: dict[str, Any]) -> None:
    (job,) = workflow["jobs"].values()
    sbom = [r for r in _runs(workflow) if r.startswith("scripts/sbom")]
    assert sbom == ["scripts/sbom dist/campaign-service.cdx.json"]
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert [u["with"]["path"] for u in uploads] == ["dist/campaign-service.cdx.json"]


def test_scripts_test_runs_the_guards() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    for command in ("ruff check", "mypy", "lint-imports", "security_gate.py bandit", "security_gate.py audit"):
        assert command in script, command
