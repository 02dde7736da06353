"""deploy/k8s: every manifest against the Kubernetes OpenAPI schemas, offline, and against services.conf.

The schemas come from the ``kubernetes-validate`` package (PyPI), which ships them inside the
wheel, so nothing is fetched at test time. Strict mode rejects unknown fields too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deploy_compose import ROOT, ConfService, known_md_vars, load_services_conf

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we promise to run on (autoscaling/v2, policy/v1)
GATEWAYS = ("gateway_ws", "gateway_rest")


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    out = []
    for p in manifests():
        out += [json.loads(json.dumps(d)) for d in yaml.safe_load_all(p.read_text()) if d]
    return out


def k8s_name(service: str) -> str:
    return service.replace("_", "-")


def _by_kind(res: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in res if r["kind"] == kind}


def k8s_problems(res: list[dict[str, Any]], conf: list[ConfService]) -> list[str]:
    problems: list[str] = []
    deployments = _by_kind(res, "Deployment")
    jobs = _by_kind(res, "Job")
    hpas = _by_kind(res, "HorizontalPodAutoscaler")
    known = known_md_vars()
    configmap_vars = {
        k
        for r in res
        if r["kind"] in ("ConfigMap", "Secret")
        for k in {**r.get("data", {}), **r.get("stringData", {})}
        if k.startswith("MD_")
    }
    for cs in conf:
        name = k8s_name(cs.name)
        workload = (jobs if cs.health_url is None else deployments).get(name)
        if workload is None:
            kind = "Job" if cs.health_url is None else "Deployment"
            problems.append(f"{cs.name}: no {kind} {name}")
            continue
        containers = workload["spec"]["template"]["spec"]["containers"]
        c = containers[0]
        if tuple(c.get("command", ())) != cs.command:
            problems.append(
                f"{cs.name}: command {c.get('command')} != services.conf {list(cs.command)}"
            )
        env_vars = {e["name"] for e in c.get("env", [])} | configmap_vars
        for v in env_vars:
            if v not in known:
                problems.append(f"{cs.name}: {v} is read by no code (typo?)")
        if cs.health_url is None:
            continue
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            get = p.get("httpGet") or {}
            port = ports.get(get.get("port"), get.get("port"))
            if get.get("path") != "/health" or port != cs.port:
                problems.append(f"{cs.name}: {probe} is not GET /health on {cs.port} ({p})")
        if cs.name in GATEWAYS:
            h = hpas.get(name)
            if h is None or h["spec"]["scaleTargetRef"] != {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": name,
            }:
                problems.append(
                    f"{cs.name}: no HorizontalPodAutoscaler targeting Deployment {name}"
                )
            elif not any(
                m["type"] == "Resource" and m["resource"]["name"] == "cpu"
                for m in h["spec"]["metrics"]
            ):
                problems.append(f"{cs.name}: HPA does not scale on CPU")
            if not any(r["kind"] == "Service" and r["metadata"]["name"] == name for r in res):
                problems.append(f"{cs.name}: no Service in front of the gateway")
    for infra in ("kafka", "timescaledb", "redis"):
        svc = next(
            (r for r in res if r["kind"] == "Service" and r["metadata"]["name"] == infra), None
        )
        if svc is None or svc["spec"].get("type") != "ExternalName":
            problems.append(f"{infra}: not referenced as an ExternalName service")
    return problems


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_schema_check_rejects_invalid_resources() -> None:
    dep = _by_kind(resources(), "Deployment")["gateway-ws"]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_manifests_mirror_services_conf() -> None:
    problems = k8s_problems(resources(), load_services_conf())
    assert problems == [], "\n".join(problems)


def _drop(kind: str, name: str):
    return lambda res: [r for r in res if not (r["kind"] == kind and r["metadata"]["name"] == name)]


def _edit(kind: str, name: str, fn):
    def go(res):
        for r in res:
            if r["kind"] == kind and r["metadata"]["name"] == name:
                fn(r)
        return res

    return go


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_drop("Deployment", "storage"), id="deployment-deleted"),
        pytest.param(_drop("Job", "migrate"), id="migrate-job-deleted"),
        pytest.param(_drop("HorizontalPodAutoscaler", "gateway-ws"), id="hpa-deleted"),
        pytest.param(_drop("Service", "redis"), id="external-redis-deleted"),
        pytest.param(
            _edit(
                "Deployment",
                "gateway-rest",
                lambda r: r["spec"]["template"]["spec"]["containers"][0].update(
                    command=["python", "-m", "gateway_ws"]
                ),
            ),
            id="command-changed",
        ),
        pytest.param(
            _edit(
                "Deployment",
                "aggregator",
                lambda r: r["spec"]["template"]["spec"]["containers"][0].pop("livenessProbe"),
            ),
            id="liveness-removed",
        ),
        pytest.param(
            _edit(
                "Deployment",
                "gateway-ws",
                lambda r: r["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
                    containerPort=9001
                ),
            ),
            id="probe-port-changed",
        ),
        pytest.param(
            _edit(
                "Deployment",
                "simulator",
                lambda r: r["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
                    "httpGet"
                ].update(path="/healthz"),
            ),
            id="probe-wrong-path",
        ),
    ],
)
def test_checker_catches_drift(mutate) -> None:
    assert k8s_problems(mutate(resources()), load_services_conf())


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == [p.name for p in manifests()]
