"""deploy/k8s: every manifest against the Kubernetes OpenAPI schemas, offline, and against services.conf.

The schemas come from the ``kubernetes-validate`` package (PyPI), which ships them inside the
wheel, so nothing is fetched at test time. Strict mode rejects unknown fields too.

A services.conf line that runs the module of an earlier line with extra ``--option value``
arguments (``aggregator_b``: ``python -m aggregator --http-port 8021``) is a second instance of
that service: on one machine it needs its own ports, in Kubernetes it is one more replica of the
same workload (every pod has its own ports), on another node (required pod anti-affinity), and a
PodDisruptionBudget keeps one of them through a drain.

The aggregator pair is a StatefulSet behind a headless Service, so each replica has a stable name
(``aggregator-0.aggregator-feed``) and every gateway that follows streams (``FEED_FOLLOWERS``)
lists every replica's direct feed (core/feed.py) in ``MD_AGG_FEED``.

Topics are created durable: every workload that reads ``MD_KAFKA_BOOTSTRAP`` (the bootstrap Job,
and the services, which create missing topics too) resolves ``MD_KAFKA_REPLICATION_FACTOR=3`` and
``MD_KAFKA_MIN_ISR=2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deploy_compose import (
    FEED_FOLLOWERS,
    ROOT,
    ConfService,
    known_md_vars,
    load_services_conf,
)

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we promise to run on (autoscaling/v2, policy/v1)
GATEWAYS = ("gateway_ws", "gateway_rest")
NAMESPACE = "marketdata"
FEED_PORT = 8031  # the aggregators' direct feed (MD_AGG_FEED_PORT)


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    out = []
    for p in manifests():
        out += [json.loads(json.dumps(d)) for d in yaml.safe_load_all(p.read_text()) if d]
    return out


def k8s_name(service: str) -> str:
    return service.replace("_", "-")


def instance_of(conf: list[ConfService]) -> dict[str, str]:
    """services.conf name of a second (third, ...) instance -> the service it is an instance of."""
    out: dict[str, str] = {}
    for i, cs in enumerate(conf):
        for base in conf[:i]:
            n = len(base.command)
            extra = cs.command[n:]
            if (
                base.name not in out
                and cs.command[:n] == base.command
                and extra
                and len(extra) % 2 == 0
                and all(a.startswith("--") for a in extra[::2])
            ):
                out[cs.name] = base.name
                break
    return out


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        return False  # not used here; a checker that guesses would be worse than one that refuses
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def replica_problems(res: list[dict[str, Any]], name: str, instances: int) -> list[str]:
    """``instances`` replicas of workload ``name`` (a Deployment or a StatefulSet) on different
    nodes, one kept through drains."""
    problems: list[str] = []
    dep = _by_kind(res, "StatefulSet").get(name) or _by_kind(res, "Deployment").get(name)
    if dep is None:
        return [f"{name}: no Deployment or StatefulSet"]
    replicas = dep["spec"].get("replicas", 1)
    if replicas < instances:
        problems.append(f"{name}: {replicas} replica(s), services.conf runs {instances}")
    labels = _pod_labels(dep)
    pod_spec = dep["spec"]["template"]["spec"]
    required = (
        (pod_spec.get("affinity") or {})
        .get("podAntiAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", [])
    )
    if not any(
        t.get("topologyKey") == "kubernetes.io/hostname"
        and _selects(t.get("labelSelector") or {}, labels)
        for t in required
    ):
        problems.append(f"{name}: no required pod anti-affinity per node between its replicas")
    pdbs = [
        r
        for r in res
        if r["kind"] == "PodDisruptionBudget" and _selects(r["spec"].get("selector") or {}, labels)
    ]
    if not any(
        isinstance(p["spec"].get("minAvailable"), int) and 1 <= p["spec"]["minAvailable"] < replicas
        for p in pdbs
    ):
        problems.append(f"{name}: no PodDisruptionBudget with 1 <= minAvailable < replicas")
    return problems


def _short_host(host: str) -> str:
    """``aggregator-0.aggregator-feed.marketdata.svc.cluster.local`` -> the in-namespace form."""
    for suffix in (f".{NAMESPACE}.svc.cluster.local", f".{NAMESPACE}.svc", f".{NAMESPACE}"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


def feed_problems(res: list[dict[str, Any]], name: str) -> list[str]:
    """The pair ``name`` runs as a StatefulSet behind a headless Service with the direct feed on
    ``FEED_PORT``, and every stream-following gateway lists each replica's stable address."""
    sts = _by_kind(res, "StatefulSet").get(name)
    if sts is None:
        return [f"{name}: no StatefulSet (the direct feed needs a stable name per replica)"]
    problems: list[str] = []
    spec = sts["spec"]
    replicas = spec.get("replicas", 1)
    if replicas < 2:
        problems.append(f"{name}: {replicas} replica(s), the pair needs 2")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append(f"{name}: podManagementPolicy is not Parallel (the standby waits)")
    labels = _pod_labels(sts)
    c = spec["template"]["spec"]["containers"][0]
    env = resolved_env(res, c)
    if env.get("MD_AGG_FEED_PORT") != str(FEED_PORT):
        problems.append(f"{name}: MD_AGG_FEED_PORT={env.get('MD_AGG_FEED_PORT')}, want {FEED_PORT}")
    if env.get("MD_AGG_FEED_HOST") != "0.0.0.0":
        problems.append(f"{name}: its direct feed listens on loopback only (MD_AGG_FEED_HOST)")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    svc = next(
        (
            r
            for r in res
            if r["kind"] == "Service" and r["metadata"]["name"] == spec.get("serviceName")
        ),
        None,
    )
    if svc is None:
        problems.append(f"{name}: serviceName {spec.get('serviceName')!r} is no Service")
        return problems
    svc_name = svc["metadata"]["name"]
    if svc["spec"].get("clusterIP") != "None":
        problems.append(f"{name}: Service {svc_name} is not headless (clusterIP: None)")
    selector = svc["spec"].get("selector") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{name}: Service {svc_name} does not select its pods")
    if not any(
        p.get("port") == FEED_PORT
        and ports.get(p.get("targetPort"), p.get("targetPort", p.get("port"))) == FEED_PORT
        for p in svc["spec"].get("ports", [])
    ):
        problems.append(f"{name}: Service {svc_name} does not expose the feed port {FEED_PORT}")
    want = {f"{name}-{i}.{svc_name}:{FEED_PORT}" for i in range(replicas)}
    deployments = _by_kind(res, "Deployment")
    for gw in FEED_FOLLOWERS:
        dep = deployments.get(k8s_name(gw))
        if dep is None:
            continue  # k8s_problems reports the missing workload
        raw = resolved_env(res, dep["spec"]["template"]["spec"]["containers"][0]).get("MD_AGG_FEED")
        listed = set()
        for a in (raw or "").split(","):
            host, _, port = a.strip().rpartition(":")
            if host:
                listed.add(f"{_short_host(host)}:{port}")
        if listed != want:
            problems.append(f"{gw}: MD_AGG_FEED {sorted(listed)} != the feeds {sorted(want)}")
    return problems


def resolved_env(res: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """A container's environment: its envFrom ConfigMaps/Secrets, then its env (None: valueFrom)."""
    sources = {
        (r["kind"], r["metadata"]["name"]): {**r.get("data", {}), **r.get("stringData", {})}
        for r in res
        if r["kind"] in ("ConfigMap", "Secret")
    }
    out: dict[str, str | None] = {}
    for ref in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in ref:
                out.update(sources.get((kind, ref[key]["name"]), {}))
    for e in container.get("env", []):
        out[e["name"]] = e.get("value")
    return out


TOPIC_RF, TOPIC_MIN_ISR = "3", "2"
# each stream topic spread over the brokers (the local single broker makes them 1 partition)
STREAM_PARTITIONS = "6"


def kafka_durability_problems(res: list[dict[str, Any]]) -> list[str]:
    """The bootstrap Job, and every workload that can reach Kafka, create topics with RF 3 / ISR 2."""
    problems: list[str] = []
    jobs = _by_kind(res, "Job")
    if "bootstrap" not in jobs or tuple(
        jobs["bootstrap"]["spec"]["template"]["spec"]["containers"][0].get("command", ())
    ) != ("python", "-m", "core.bootstrap"):
        problems.append("bootstrap: no Job running python -m core.bootstrap (topics)")
    for r in res:
        if r["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for c in r["spec"]["template"]["spec"]["containers"]:
            env = resolved_env(res, c)
            if "MD_KAFKA_BOOTSTRAP" not in env and r["metadata"]["name"] != "bootstrap":
                continue
            for var, want in (
                ("MD_KAFKA_REPLICATION_FACTOR", TOPIC_RF),
                ("MD_KAFKA_MIN_ISR", TOPIC_MIN_ISR),
                ("MD_KAFKA_STREAM_PARTITIONS", STREAM_PARTITIONS),
            ):
                if env.get(var) != want:
                    problems.append(
                        f"{r['kind']} {r['metadata']['name']}: {var}={env.get(var) or 'unset (1)'}, want {want}"
                    )
    return problems


# Readiness is about dependencies (leave the load balancer), liveness about the process itself
# (restart it): separate endpoints (core/health.py). A startup probe guards a slow start from the
# liveness probe, so it asks the same question as liveness.
PROBE_PATHS = {
    "readinessProbe": "/health/ready",
    "livenessProbe": "/health/live",
    "startupProbe": "/health/live",
}
READINESS_WITHIN_S = 15  # a pod that lost its feed leaves the load balancer this fast
LIVENESS_AT_LEAST_S = 30  # ...while a restart needs a process broken for this long


def _window_s(p: dict[str, Any]) -> int:
    """How long a probe must keep failing before Kubernetes acts (defaults: 10 s x 3)."""
    return int(p.get("periodSeconds", 10)) * int(p.get("failureThreshold", 3))


def probe_problems(cs: ConfService, c: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, path in PROBE_PATHS.items():
        p = c.get(probe)
        if p is None:
            if probe != "startupProbe":
                problems.append(f"{cs.name}: no {probe}")
            continue
        get = p.get("httpGet") or {}
        port = ports.get(get.get("port"), get.get("port"))
        if get.get("path") != path or port != cs.port:
            problems.append(f"{cs.name}: {probe} is not GET {path} on {cs.port} ({p})")
    ready, live = c.get("readinessProbe") or {}, c.get("livenessProbe") or {}
    if ready and _window_s(ready) > READINESS_WITHIN_S:
        problems.append(
            f"{cs.name}: readinessProbe takes {_window_s(ready)} s to act, want <= {READINESS_WITHIN_S}"
        )
    if live and _window_s(live) < LIVENESS_AT_LEAST_S:
        problems.append(
            f"{cs.name}: livenessProbe restarts after {_window_s(live)} s, want >= {LIVENESS_AT_LEAST_S}"
        )
    return problems


def _by_kind(res: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in res if r["kind"] == kind}


def gateway_scaling_problems(
    svc: str, name: str, hpas: dict[str, dict[str, Any]], res: list[dict[str, Any]]
) -> list[str]:
    """A gateway scales out: a CPU HorizontalPodAutoscaler on its Deployment, a Service in front."""
    problems: list[str] = []
    h = hpas.get(name)
    if h is None or h["spec"]["scaleTargetRef"] != {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }:
        problems.append(f"{svc}: no HorizontalPodAutoscaler targeting Deployment {name}")
    elif not any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in h["spec"]["metrics"]
    ):
        problems.append(f"{svc}: HPA does not scale on CPU")
    if not any(r["kind"] == "Service" and r["metadata"]["name"] == name for r in res):
        problems.append(f"{svc}: no Service in front of the gateway")
    return problems


def k8s_problems(res: list[dict[str, Any]], conf: list[ConfService]) -> list[str]:
    problems: list[str] = []
    deployments = _by_kind(res, "Deployment")
    statefulsets = _by_kind(res, "StatefulSet")
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
    second = instance_of(conf)
    for base in sorted(set(second.values())):
        n = 1 + sum(b == base for b in second.values())
        problems += replica_problems(res, k8s_name(base), n)
        if base == "aggregator":
            problems += feed_problems(res, k8s_name(base))
    for cs in conf:
        if cs.name in second:  # one more replica of its base service's workload (above)
            continue
        name = k8s_name(cs.name)
        workload = (jobs if cs.health_url is None else deployments).get(name)
        if workload is None and cs.name in second.values():
            workload = statefulsets.get(name)  # a pair: a stable name per replica
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
        problems += probe_problems(cs, c)
        if cs.name in GATEWAYS:
            problems += gateway_scaling_problems(cs.name, name, hpas, res)
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
                "StatefulSet",
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


def _probe(deployment: str, probe: str, **changes: Any):
    return _edit(
        "Deployment",
        deployment,
        lambda r: r["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"].update(
            **changes
        ),
    )


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            _probe("gateway-rest", "livenessProbe", path="/health"), id="liveness-on-health"
        ),
        pytest.param(
            _probe("gateway-ws", "livenessProbe", path="/health/ready"), id="liveness-on-ready"
        ),
        pytest.param(
            _probe("storage", "readinessProbe", path="/health/live"), id="readiness-on-live"
        ),
        pytest.param(
            _probe("fix-gateway", "startupProbe", path="/health/ready"), id="startup-on-ready"
        ),
        pytest.param(
            _edit(
                "Deployment",
                "gateway-ws",
                lambda r: r["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(
                    failureThreshold=1
                ),
            ),
            id="liveness-hair-trigger",
        ),
        pytest.param(
            _edit(
                "Deployment",
                "gateway-rest",
                lambda r: r["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
                    failureThreshold=12
                ),
            ),
            id="readiness-slow",
        ),
    ],
)
def test_probe_checker_catches_drift(mutate) -> None:
    assert k8s_problems(mutate(resources()), load_services_conf())


def test_one_health_endpoint_for_every_probe_is_rejected() -> None:
    """The manifests before issue 11: every probe on the combined /health, so a dependency
    outage restarted pods. Each long-running workload must be flagged."""
    res = resources()
    for r in res:
        if r["kind"] not in ("Deployment", "StatefulSet"):
            continue
        c = r["spec"]["template"]["spec"]["containers"][0]
        for probe in PROBE_PATHS:
            if probe in c:
                c[probe]["httpGet"]["path"] = "/health"
    problems = k8s_problems(res, load_services_conf())
    flagged = {p.split(":")[0] for p in problems if "livenessProbe is not GET /health/live" in p}
    want = {cs.name for cs in load_services_conf() if cs.health_url} - set(
        instance_of(load_services_conf())
    )
    assert flagged == want, problems


def test_aggregator_runs_as_a_pair_on_two_nodes() -> None:
    conf = load_services_conf()
    assert instance_of(conf) == {"aggregator_b": "aggregator"}
    assert replica_problems(resources(), "aggregator", 2) == []


def test_aggregator_feed_has_a_stable_address_per_replica() -> None:
    res = resources()
    sts = _by_kind(res, "StatefulSet").get("aggregator")
    assert sts is not None and sts["spec"]["replicas"] >= 2
    assert feed_problems(res, "aggregator") == []
    want = {f"aggregator-{i}.aggregator-feed:{FEED_PORT}" for i in range(sts["spec"]["replicas"])}
    for gw in FEED_FOLLOWERS:
        c = _by_kind(res, "Deployment")[k8s_name(gw)]["spec"]["template"]["spec"]["containers"][0]
        feed = resolved_env(res, c)["MD_AGG_FEED"]
        assert feed is not None and set(feed.split(",")) == want, gw


def _gateway_env(gw: str, **env: str):
    def fn(r):
        c = r["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c.get("env", []) if e["name"] not in env]
        c["env"] += [{"name": k, "value": v} for k, v in env.items() if v]

    return _edit("Deployment", k8s_name(gw), fn)


def _as_deployment(r):
    r["kind"] = "Deployment"
    r["spec"].pop("serviceName")
    r["spec"].pop("podManagementPolicy")


def _sts_env(**env: str):
    def fn(r):
        c = r["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] not in env]
        c["env"] += [{"name": k, "value": v} for k, v in env.items() if v]

    return _edit("StatefulSet", "aggregator", fn)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_edit("StatefulSet", "aggregator", _as_deployment), id="a-deployment"),
        pytest.param(_drop("Service", "aggregator-feed"), id="feed-service-deleted"),
        pytest.param(
            _edit("Service", "aggregator-feed", lambda r: r["spec"].pop("clusterIP")),
            id="feed-service-not-headless",
        ),
        pytest.param(
            _edit(
                "Service",
                "aggregator-feed",
                lambda r: r["spec"].update(selector={"app.kubernetes.io/name": "storage"}),
            ),
            id="feed-service-selects-other-pods",
        ),
        pytest.param(
            _edit("Service", "aggregator-feed", lambda r: r["spec"]["ports"][0].update(port=8032)),
            id="feed-service-wrong-port",
        ),
        pytest.param(
            _edit("StatefulSet", "aggregator", lambda r: r["spec"].update(serviceName="other")),
            id="sts-names-another-service",
        ),
        pytest.param(
            _edit(
                "StatefulSet",
                "aggregator",
                lambda r: r["spec"].update(podManagementPolicy="OrderedReady"),
            ),
            id="ordered-start",
        ),
        pytest.param(_sts_env(MD_AGG_FEED_PORT=""), id="feed-off"),
        pytest.param(_sts_env(MD_AGG_FEED_HOST="127.0.0.1"), id="feed-on-loopback"),
        pytest.param(_gateway_env("gateway_ws", MD_AGG_FEED=""), id="ws-without-feed"),
        pytest.param(
            _gateway_env("fix_gateway", MD_AGG_FEED="aggregator-0.aggregator-feed:8031"),
            id="fix-one-feed-only",
        ),
        pytest.param(
            _gateway_env("gateway_ws", MD_AGG_FEED="aggregator-feed:8031,aggregator-feed:8031"),
            id="ws-load-balanced-name",
        ),
        pytest.param(
            _edit("StatefulSet", "aggregator", lambda r: r["spec"].update(replicas=3)),
            id="third-replica-not-listed",
        ),
    ],
)
def test_feed_checker_catches_drift(mutate) -> None:
    res = mutate(resources())
    assert feed_problems(res, "aggregator")
    assert k8s_problems(res, load_services_conf())


def test_feed_addresses_may_be_fully_qualified() -> None:
    fq = ",".join(
        f"aggregator-{i}.aggregator-feed.{NAMESPACE}.svc.cluster.local:{FEED_PORT}" for i in (0, 1)
    )
    res = _gateway_env("gateway_ws", MD_AGG_FEED=fq)(resources())
    assert feed_problems(res, "aggregator") == []


def test_topics_are_created_with_rf3_and_min_isr2() -> None:
    problems = kafka_durability_problems(resources())
    assert problems == [], "\n".join(problems)


def _config(fn):
    return _edit("ConfigMap", "md-config", lambda r: fn(r["data"]))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_config(lambda d: d.pop("MD_KAFKA_REPLICATION_FACTOR")), id="rf-unset"),
        pytest.param(
            _config(lambda d: d.pop("MD_KAFKA_STREAM_PARTITIONS")), id="stream-partitions-unset"
        ),
        pytest.param(_config(lambda d: d.update(MD_KAFKA_MIN_ISR="1")), id="min-isr-1"),
        pytest.param(
            _edit(
                "Job",
                "bootstrap",
                lambda r: r["spec"]["template"]["spec"]["containers"][0].update(
                    env=[{"name": "MD_KAFKA_REPLICATION_FACTOR", "value": "1"}]
                ),
            ),
            id="bootstrap-overrides-rf",
        ),
        pytest.param(_drop("Job", "bootstrap"), id="bootstrap-job-deleted"),
    ],
)
def test_durability_checker_catches_drift(mutate) -> None:
    assert kafka_durability_problems(mutate(resources()))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            _edit("StatefulSet", "aggregator", lambda r: r["spec"].update(replicas=1)),
            id="one-replica",
        ),
        pytest.param(
            _edit(
                "StatefulSet", "aggregator", lambda r: r["spec"]["template"]["spec"].pop("affinity")
            ),
            id="no-anti-affinity",
        ),
        pytest.param(
            _edit(
                "StatefulSet",
                "aggregator",
                lambda r: r["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"
                ][0].update(topologyKey="topology.kubernetes.io/zone"),
            ),
            id="anti-affinity-not-per-node",
        ),
        pytest.param(_drop("PodDisruptionBudget", "aggregator"), id="pdb-deleted"),
    ],
)
def test_pair_checker_catches_drift(mutate) -> None:
    assert k8s_problems(mutate(resources()), load_services_conf())


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == [p.name for p in manifests()]
