"""Every metric the dashboard and the alert rules query is one the service (or its relay) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import campaign_service.metrics  # noqa: F401 - registers the service's metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "campaign-service.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

# Names queried before anything exported them; empty now that the outbox relay exports its own.
PENDING: set[str] = set()

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "unknown": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def exported_names() -> set[str]:
    """Sample names the registry exposes, labelled metrics included even before their first sample."""
    return {family.name + suffix for family in REGISTRY.collect() for suffix in _SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (without a parser: strip strings, matchers,
    ranges, grouping clauses and template variables, then keep identifiers not called as functions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if not call and name not in _KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name):
            names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_extractor_finds_names_and_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{job=~"$job",x="y z"}[$__rate_interval])))'
        " / on (instance) group_left b_total and ignoring(z) c > bool 5 offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("label_values(grpc_server_handled_total, job)") == {"grpc_server_handled_total", "job"}


def test_registry_exposes_the_plan_names() -> None:
    names = exported_names()
    for name in (
        "vip_tiers_total",
        "vip_tier_lookup_latency_seconds_bucket",
        "vip_tier_assignment_events_total",
        "vip_tier_assignment_failures_total",
        "vip_tier_lookup_errors_by_type_total",
        "grpc_server_handled_total",
    ):
        assert name in names


@pytest.mark.parametrize("expr", dashboard_exprs() + rule_exprs())
def test_every_queried_metric_exists(expr: str) -> None:
    # label_values(metric, label): the second argument is a label name, not a metric.
    names = metric_names(re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", expr))
    assert names, f"no metric found in {expr!r}"
    unknown = names - exported_names() - PENDING
    assert not unknown, f"{expr!r} queries metrics nobody exports: {sorted(unknown)}"


def test_dashboard_has_the_plans_panels_and_the_outbox() -> None:
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in ("Tier lookups per minute", "Assignment failure types", "Lookup latency", "Outbox backlog"):
        assert any(t.startswith(wanted) for t in titles), wanted


def test_every_alert_links_an_existing_runbook() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        path = rule["annotations"]["runbook_url"].split("#")[0]
        assert (ROOT / path).is_file(), f"{rule['alert']}: {path} missing"
