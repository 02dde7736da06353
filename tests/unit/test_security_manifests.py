"""deploy/k8s and docker-compose.yml run with production settings (issue 12).

- No Secret in the kustomization (``kubectl apply -k`` must never overwrite a real one), no
  ``CHANGE-ME`` anywhere.
- Each gateway's environment, resolved the way Kubernetes resolves it (ConfigMap, Secrets by their
  documented keys, env), has no development default by core.security's own check, the same one
  that makes the gateway refuse to start.
- /metrics is not on a public port; internal traffic is TLS (Kafka SASL_SSL with a principal per
  workload, PostgreSQL verify-full, Redis AUTH).
- NetworkPolicies: default deny both ways; from anywhere only the gateways' client ports; ops
  ports only from the monitoring namespace; the direct feed only from its followers.
- Compose: Grafana and Prometheus on loopback only, no admin/admin, no --web.enable-lifecycle;
  the gateways with production settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from core.security import fix_findings, replay_findings, rest_findings, ws_findings
from core.settings import Settings
from tests.unit.test_deploy_compose import COMPOSE, _env, _strip_default, load_compose
from tests.unit.test_deploy_k8s import K8S, _by_kind, resources

Res = list[dict[str, Any]]

# The keys of the Secrets created out of band (10-config.yaml, docs/security.md)
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "md-secrets": ("MD_PG_DSN", "MD_REDIS_PASSWORD", "MD_ANON_SECRET"),
    "md-gateway-ws": ("MD_WS_JWT_HS256_SECRET",),
    "md-gateway-rest": ("MD_REST_API_KEYS",),
}
KAFKA_SECRET_KEYS = ("MD_KAFKA_SASL_USERNAME", "MD_KAFKA_SASL_PASSWORD")
GATEWAYS = {
    "gateway-ws": ("MD_WS_HOST", ws_findings, 8001, "MD_WS_METRICS_PORT"),
    "gateway-rest": ("MD_REST_HOST", rest_findings, 8000, "MD_REST_METRICS_PORT"),
    "fix-gateway": ("MD_FIX_HOST", lambda s: fix_findings(s, []), 9876, None),
    "replay": ("MD_REPLAY_HOST", replay_findings, 8002, "MD_REPLAY_METRICS_PORT"),
}
KAFKA_USERS = ("bootstrap", "simulator", "aggregator", "storage", "gateway-ws", "fix-gateway")
FEED_FOLLOWERS = {"gateway-ws", "fix-gateway"}
SOURCE_FEED_READERS = {"aggregator"}  # the simulator's source feed, port 8033 (core/input_feed.py)
ANY = "any"


def workloads(res: Res) -> dict[str, dict[str, Any]]:
    return {**_by_kind(res, "Deployment"), **_by_kind(res, "StatefulSet"), **_by_kind(res, "Job")}


def env_of(res: Res, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment; a Secret's value is a placeholder of its documented key."""
    maps = {r["metadata"]["name"]: r.get("data", {}) for r in res if r["kind"] == "ConfigMap"}
    out: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            out.update(maps.get(ref["configMapRef"]["name"], {}))
        elif "secretRef" in ref:
            name = ref["secretRef"]["name"]
            keys = KAFKA_SECRET_KEYS if name.startswith("md-kafka-") else SECRET_KEYS.get(name, ())
            out.update({k: f"<{name}:{k}>" for k in keys})
    for e in container.get("env", []):
        out[e["name"]] = e.get("value") or "<valueFrom>"
    return out


def secret_problems(res: Res) -> list[str]:
    problems = [
        f"Secret {r['metadata']['name']} is in the kustomization (apply -k would overwrite it)"
        for r in res
        if r["kind"] == "Secret"
    ]
    for p in K8S.glob("*.yaml"):
        if "CHANGE-ME" in p.read_text():
            problems.append(f"{p.name}: a CHANGE-ME placeholder")
    return problems


def gateway_problems(res: Res) -> list[str]:
    problems: list[str] = []
    wl = workloads(res)
    for name, (host_var, findings, client_port, metrics_var) in GATEWAYS.items():
        dep = wl.get(name)
        if dep is None:
            problems.append(f"{name}: missing")
            continue
        c = dep["spec"]["template"]["spec"]["containers"][0]
        env = env_of(res, c)
        s = Settings.from_env(env)
        for f in findings(s):
            problems.append(f"{name}: {f}")
        if env.get(host_var, "127.0.0.1") in ("127.0.0.1", "localhost"):
            problems.append(f"{name}: {host_var} is loopback, the Service cannot reach it")
        scrape = dep["spec"]["template"]["metadata"].get("annotations", {})
        port = str(scrape.get("prometheus.io/port", ""))
        if port == str(client_port):
            problems.append(f"{name}: Prometheus scrapes the public port {client_port}")
        if metrics_var is not None and env.get(metrics_var) != port:
            problems.append(f"{name}: {metrics_var}={env.get(metrics_var)} but scraped on {port}")
        if name != "fix-gateway" and "MD_ANON_SECRET" not in env:
            problems.append(f"{name}: no MD_ANON_SECRET: order ids leave as the source sent them")
        if name == "fix-gateway" and dep["spec"].get("replicas", 1) > 1:
            # two pods must not serve one session (fix_gateway/session_lock.py)
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            if env.get("MD_FIX_SESSION_LOCK") != "redis":
                problems.append(f"{name}: several replicas without MD_FIX_SESSION_LOCK=redis")
            elif 6379 not in egress_ports(res, labels):
                problems.append(f"{name}: MD_FIX_SESSION_LOCK=redis but no egress to Redis")
    return problems


def egress_ports(res: Res, labels: dict[str, str]) -> set[int]:
    """The ports a pod with ``labels`` may connect to (the union over the policies)."""
    out: set[int] = set()
    for pol in (r for r in res if r["kind"] == "NetworkPolicy"):
        if "Egress" in pol["spec"].get("policyTypes", []) and _selected(pol, labels):
            for rule in pol["spec"].get("egress") or []:
                out |= {int(p["port"]) for p in rule.get("ports") or [] if "port" in p}
    return out


def internal_traffic_problems(res: Res) -> list[str]:
    problems: list[str] = []
    for name, w in workloads(res).items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            env = env_of(res, c)
            if name in KAFKA_USERS:
                if env.get("MD_KAFKA_SECURITY_PROTOCOL") != "SASL_SSL":
                    problems.append(f"{name}: Kafka without SASL_SSL")
                if not env.get("MD_KAFKA_SASL_USERNAME", "").startswith(f"<md-kafka-{name}:"):
                    problems.append(f"{name}: no Kafka principal of its own (md-kafka-{name})")
            if env.get("MD_PG_SSLMODE") != "verify-full":
                problems.append(f"{name}: MD_PG_SSLMODE is not verify-full")
            if "MD_REDIS_PASSWORD" not in env:
                problems.append(f"{name}: no MD_REDIS_PASSWORD")
    return problems


def kafka_acl_problems(res: Res) -> list[str]:
    """The brokers' ACLs (core/kafka_acls.py) are applied by the bootstrap Job, as md-bootstrap,
    over SASL_SSL, before it creates the topics."""
    job = workloads(res).get("bootstrap")
    if job is None:
        return ["bootstrap: missing"]
    inits = job["spec"]["template"]["spec"].get("initContainers") or []
    acl = [c for c in inits if c.get("command", [])[-2:] == ["core.kafka_acls", "apply"]]
    if not acl:
        return ["bootstrap: no initContainer runs python -m core.kafka_acls apply"]
    env = env_of(res, acl[0])
    problems = []
    if not env.get("MD_KAFKA_SASL_USERNAME", "").startswith("<md-kafka-bootstrap:"):
        problems.append("kafka-acls: not applied as md-bootstrap")
    if env.get("MD_KAFKA_SECURITY_PROTOCOL") != "SASL_SSL":
        problems.append("kafka-acls: Kafka without SASL_SSL")
    return problems


def _selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    sel = policy["spec"]["podSelector"]
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        if e["operator"] != "In":
            raise AssertionError(f"checker does not evaluate {e['operator']}")
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def _peer(p: dict[str, Any]) -> str:
    if "namespaceSelector" in p:
        labels = p["namespaceSelector"].get("matchLabels", {})
        return "ns:" + labels.get("kubernetes.io/metadata.name", "*")
    if "podSelector" in p:
        sel = p["podSelector"]
        names = list((sel.get("matchLabels") or {}).values())
        for e in sel.get("matchExpressions") or []:
            names += e["values"]
        return "pods:" + ",".join(sorted(names))
    return ANY  # an ipBlock: treat as the world


def ingress_peers(res: Res, labels: dict[str, str], port: int) -> set[str]:
    """Who may open ``port`` of a pod with ``labels`` (the union over the policies)."""
    out: set[str] = set()
    for pol in (r for r in res if r["kind"] == "NetworkPolicy"):
        if "Ingress" not in pol["spec"].get("policyTypes", []) or not _selected(pol, labels):
            continue
        for rule in pol["spec"].get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or [{"port": port}]}
            if port in ports:
                out |= {_peer(p) for p in rule.get("from") or [{}]} if rule.get("from") else {ANY}
    return out


def network_problems(res: Res) -> list[str]:
    problems: list[str] = []
    pols = [r for r in res if r["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in pols
        if p["spec"]["podSelector"] == {}
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append("no default-deny NetworkPolicy (Ingress and Egress) for the namespace")
    public = {name: GATEWAYS[name][2] for name in GATEWAYS}
    for name, w in workloads(res).items():
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        for c in w["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                port = p["containerPort"]
                peers = ingress_peers(res, labels, port)
                if port == public.get(name):
                    if peers != {ANY}:
                        problems.append(f"{name}: client port {port} not open to clients")
                elif port == 8031:
                    if peers != {f"pods:{','.join(sorted(FEED_FOLLOWERS))}"}:
                        problems.append(f"{name}: feed port 8031 open to {sorted(peers)}")
                elif port == 8033:
                    if peers != {f"pods:{','.join(sorted(SOURCE_FEED_READERS))}"}:
                        problems.append(f"{name}: source feed port 8033 open to {sorted(peers)}")
                elif peers - {"ns:monitoring"}:
                    problems.append(f"{name}: ops port {port} open to {sorted(peers)}")
    return problems


# ------------------------------------------------------------------ tests


def test_no_secret_is_applied_by_the_kustomization() -> None:
    assert secret_problems(resources()) == []
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not kust.get("secretGenerator") and not kust.get("generatorOptions")


def test_gateways_run_production_settings() -> None:
    assert gateway_problems(resources()) == []


def test_internal_traffic_is_encrypted_and_authenticated() -> None:
    assert internal_traffic_problems(resources()) == []


def test_kafka_acls_are_applied() -> None:
    assert kafka_acl_problems(resources()) == []


def test_network_policies() -> None:
    assert network_problems(resources()) == []


def _secret(res: Res) -> Res:
    return [
        *res,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "md-secrets", "namespace": "marketdata"},
            "stringData": {"MD_PG_DSN": "postgresql://marketdata:CHANGE-ME@timescaledb/x"},
        },
    ]


def _env_set(dep: str, name: str, value: str | None) -> Callable[[Res], Res]:
    def fn(res: Res) -> Res:
        c = workloads(res)[dep]["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != name]
        if value is not None:
            c["env"].append({"name": name, "value": value})
        return res

    return fn


def _drop_secret_ref(dep: str, secret: str) -> Callable[[Res], Res]:
    def fn(res: Res) -> Res:
        c = workloads(res)[dep]["spec"]["template"]["spec"]["containers"][0]
        c["envFrom"] = [r for r in c["envFrom"] if r.get("secretRef", {}).get("name") != secret]
        return res

    return fn


def _policy(name: str, fn: Callable[[dict[str, Any]], Any]) -> Callable[[Res], Res]:
    def go(res: Res) -> Res:
        pol = next(r for r in res if r["kind"] == "NetworkPolicy" and r["metadata"]["name"] == name)
        fn(pol)
        return res

    return go


def _config(**env: str) -> Callable[[Res], Res]:
    def fn(res: Res) -> Res:
        next(r for r in res if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "md-config")[
            "data"
        ].update(env)
        return res

    return fn


@pytest.mark.parametrize(
    "check,mutate",
    [
        pytest.param(secret_problems, _secret, id="placeholder-secret"),
        pytest.param(
            gateway_problems, _env_set("gateway-ws", "MD_WS_ANON_CHANNELS", "*"), id="ws-anon-all"
        ),
        pytest.param(
            gateway_problems, _env_set("gateway-ws", "MD_WS_TLS_CERT", None), id="ws-no-tls"
        ),
        pytest.param(
            gateway_problems, _drop_secret_ref("gateway-ws", "md-gateway-ws"), id="ws-no-jwt"
        ),
        pytest.param(
            gateway_problems,
            _env_set("gateway-rest", "MD_REST_REQUIRE_KEY", "0"),
            id="rest-anon-l3",
        ),
        pytest.param(
            gateway_problems,
            _env_set("fix-gateway", "MD_FIX_SESSIONS_FILE", None),
            id="fix-client1",
        ),
        pytest.param(
            gateway_problems,
            _drop_secret_ref("gateway-rest", "md-secrets"),
            id="rest-no-anon-secret",
        ),
        pytest.param(
            gateway_problems,
            _env_set("fix-gateway", "MD_FIX_SESSION_LOCK", None),
            id="fix-no-session-lock",
        ),
        pytest.param(
            gateway_problems,
            _policy(
                "redis-egress",
                lambda p: p["spec"]["podSelector"]["matchExpressions"][0]["values"].remove(
                    "fix-gateway"
                ),
            ),
            id="fix-lock-no-redis-egress",
        ),
        pytest.param(
            gateway_problems,
            _env_set("gateway-rest", "MD_REST_METRICS_PORT", None),
            id="rest-metrics-public",
        ),
        pytest.param(
            gateway_problems, _env_set("replay", "MD_REPLAY_TLS_CERT", None), id="replay-no-tls"
        ),
        pytest.param(
            gateway_problems, _env_set("replay", "MD_WS_ANON_CHANNELS", "*"), id="replay-anon-l3"
        ),
        pytest.param(
            gateway_problems, _drop_secret_ref("replay", "md-gateway-ws"), id="replay-no-jwt"
        ),
        pytest.param(
            network_problems,
            _policy(
                "gateways-public",
                lambda p: p["spec"]["podSelector"]["matchExpressions"][0]["values"].remove(
                    "replay"
                ),
            ),
            id="replay-port-closed",
        ),
        pytest.param(
            internal_traffic_problems,
            _config(MD_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
            id="kafka-plaintext",
        ),
        pytest.param(
            internal_traffic_problems, _config(MD_PG_SSLMODE="require"), id="pg-no-verify"
        ),
        pytest.param(
            internal_traffic_problems,
            _drop_secret_ref("simulator", "md-kafka-simulator"),
            id="shared-principal",
        ),
        pytest.param(
            network_problems,
            lambda r: [x for x in r if x["metadata"]["name"] != "default-deny"],
            id="no-default-deny",
        ),
        pytest.param(
            kafka_acl_problems,
            lambda r: [
                workloads(r)["bootstrap"]["spec"]["template"]["spec"].pop("initContainers"),
                r,
            ][1],
            id="no-kafka-acls",
        ),
        pytest.param(
            kafka_acl_problems,
            lambda r: [
                workloads(r)["bootstrap"]["spec"]["template"]["spec"]["initContainers"][0][
                    "envFrom"
                ].pop(),
                r,
            ][1],
            id="kafka-acls-no-principal",
        ),
        pytest.param(
            network_problems,
            _policy("ops-from-monitoring", lambda p: p["spec"]["ingress"][0].pop("from")),
            id="ops-open",
        ),
        pytest.param(
            network_problems,
            _policy("aggregator-feed", lambda p: p["spec"]["ingress"][0].pop("from")),
            id="feed-open",
        ),
        pytest.param(
            network_problems,
            _policy("source-feed", lambda p: p["spec"]["ingress"][0].pop("from")),
            id="source-feed-open",
        ),
        pytest.param(
            network_problems,
            _policy("source-feed", lambda p: p["spec"]["ingress"].clear()),
            id="source-feed-closed",
        ),
        pytest.param(
            network_problems,
            _policy(
                "gateways-public",
                lambda p: p["spec"]["ingress"][0]["ports"].append(
                    {"port": 9101, "protocol": "TCP"}
                ),
            ),
            id="metrics-public",
        ),
    ],
)
def test_checkers_catch_drift(
    check: Callable[[Res], list[str]], mutate: Callable[[Res], Res]
) -> None:
    res = json.loads(json.dumps(resources()))
    assert check(res) == []
    assert check(mutate(res))


# ------------------------------------------------------------------ compose


def compose_security_problems(c: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    s = c["services"]
    for name in ("prometheus", "grafana"):
        for port in s[name].get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: published on every interface ({port})")
    if "--web.enable-lifecycle" in " ".join(map(str, s["prometheus"].get("command") or [])):
        problems.append("prometheus: --web.enable-lifecycle (anyone can stop or reload it)")
    g = _env(s["grafana"])
    if "admin" in (g.get("GF_SECURITY_ADMIN_PASSWORD", "admin").split(":-")[-1].rstrip("}"), ""):
        problems.append("grafana: admin password defaults to admin (or is unset)")
    for svc, finder in (
        ("gateway_ws", ws_findings),
        ("gateway_rest", rest_findings),
        ("fix_gateway", lambda st: fix_findings(st, [])),
        ("replay", replay_findings),
    ):
        env = {
            k: _strip_default(v)  # ${VAR:?message} stays: compose refuses to start without VAR
            for k, v in _env(s[svc]).items()
            if k.startswith(("MD_WS_", "MD_REST_", "MD_FIX_", "MD_REPLAY_"))
            or k == "MD_ALLOW_INSECURE"
        }
        if env.get("MD_ALLOW_INSECURE"):
            problems.append(f"{svc}: MD_ALLOW_INSECURE")
        for f in finder(Settings.from_env(env)):
            problems.append(f"{svc}: {f}")
    r = _env(s["redis"]) | {"cmd": " ".join(map(str, s["redis"].get("command") or []))}
    if "requirepass" not in r["cmd"]:
        problems.append("redis: no AUTH (requirepass)")
    return problems + compose_tls_problems(c)


def _mounted(svc: dict[str, Any], path: str) -> bool:
    """Whether ``path`` inside the container is (or is under) one of its volumes' targets."""
    for v in svc.get("volumes") or []:
        target = _strip_default(str(v)).split(":")[-2] if str(v).count(":") >= 2 else ""
        if target and (path == target or path.startswith(target.rstrip("/") + "/")):
            return True
    return False


def _broker_tls_problems(name: str, svc: dict[str, Any], env: dict[str, str]) -> list[str]:
    problems: list[str] = []
    protocols = {p.split(":")[1] for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    if protocols - {"SSL", "SASL_SSL"}:
        problems.append(f"{name}: a listener without TLS ({sorted(protocols)})")
    for var in ("KAFKA_SSL_KEYSTORE_LOCATION", "KAFKA_SSL_TRUSTSTORE_LOCATION"):
        if not _mounted(svc, env.get(var, "-")):
            problems.append(f"{name}: {var} is not a mounted file")
    if env.get("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https") != "https":
        problems.append(f"{name}: brokers do not verify each other's host names")
    if "--command-config" not in " ".join(map(str, svc["healthcheck"]["test"])):
        problems.append(f"{name}: the health check cannot speak TLS")
    return problems


def _client_tls_problems(name: str, svc: dict[str, Any], env: dict[str, str]) -> list[str]:
    problems: list[str] = []
    if env.get("MD_KAFKA_SECURITY_PROTOCOL") not in ("SSL", "SASL_SSL"):
        problems.append(f"{name}: Kafka without TLS")
    if env.get("MD_PG_SSLMODE") != "verify-full":
        problems.append(f"{name}: PostgreSQL without verify-full")
    for var in ("MD_KAFKA_SSL_CAFILE", "MD_PG_SSLROOTCERT"):
        if not _mounted(svc, env.get(var, "-")):
            problems.append(f"{name}: {var} is not a mounted file")
    return problems


def compose_tls_problems(c: dict[str, Any]) -> list[str]:
    """Kafka and PostgreSQL speak TLS only in compose, and every service verifies them."""
    problems: list[str] = []
    s = c["services"]
    for name, svc in s.items():
        env = _env(svc)
        if "KAFKA_LISTENERS" in env:  # a broker
            problems += _broker_tls_problems(name, svc, env)
        elif "MD_KAFKA_BOOTSTRAP" in env or "MD_PG_DSN" in env:  # a platform service
            problems += _client_tls_problems(name, svc, env)
    pg = s["timescaledb"]
    cmd = " ".join(map(str, pg.get("command") or []))
    if "ssl=on" not in cmd:
        problems.append("timescaledb: no ssl=on")
    hba = next(
        (v for v in pg.get("volumes") or [] if str(v).endswith(":/etc/md/pg_hba.conf:ro")), ""
    )
    if "hba_file=/etc/md/pg_hba.conf" not in cmd or not hba:
        problems.append("timescaledb: not the repository's pg_hba.conf")
    else:
        rules = [
            ln.split()[0]
            for ln in (COMPOSE.parent / str(hba).split(":")[0]).read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
        if set(rules) - {"local", "hostssl"}:
            problems.append(f"timescaledb: pg_hba.conf allows connections without TLS ({rules})")
    if "--tls.enabled" not in (s["kafka-exporter"].get("command") or []):
        problems.append("kafka-exporter: Kafka without TLS")
    return problems


def test_compose_runs_production_settings() -> None:
    assert compose_security_problems(load_compose()) == [], COMPOSE


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda c: c["services"]["grafana"].update(ports=["3000:3000"]), id="grafana-public"
        ),
        pytest.param(
            lambda c: c["services"]["prometheus"]["command"].append("--web.enable-lifecycle"),
            id="lifecycle",
        ),
        pytest.param(
            lambda c: c["services"]["grafana"]["environment"].update(
                GF_SECURITY_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-admin}"
            ),
            id="admin-admin",
        ),
        pytest.param(
            lambda c: c["services"]["gateway_ws"]["environment"].pop("MD_WS_TLS_CERT"),
            id="ws-no-tls",
        ),
        pytest.param(
            lambda c: c["services"]["replay"]["environment"].pop("MD_REPLAY_TLS_CERT"),
            id="replay-no-tls",
        ),
        pytest.param(
            lambda c: c["services"]["replay"]["environment"].update(MD_ALLOW_INSECURE="1"),
            id="replay-insecure",
        ),
        pytest.param(
            lambda c: c["services"]["kafka-2"]["environment"].update(
                KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="SSL:SSL,CONTROLLER:PLAINTEXT,EXTERNAL:SSL"
            ),
            id="kafka-controller-plaintext",
        ),
        pytest.param(
            lambda c: c["services"]["storage"]["environment"].update(MD_PG_SSLMODE="require"),
            id="pg-no-verify",
        ),
        pytest.param(
            lambda c: c["services"]["gateway_ws"]["environment"].pop("MD_KAFKA_SECURITY_PROTOCOL"),
            id="ws-kafka-plaintext",
        ),
        pytest.param(
            lambda c: c["services"]["gateway_rest"].update(volumes=[]),
            id="rest-ca-not-mounted",
        ),
        pytest.param(
            lambda c: c["services"]["timescaledb"]["command"].remove("ssl=on"),
            id="pg-no-ssl",
        ),
        pytest.param(
            lambda c: c["services"]["fix_gateway"]["environment"].update(MD_ALLOW_INSECURE="1"),
            id="insecure",
        ),
    ],
)
def test_compose_checker_catches_drift(mutate: Callable[[dict[str, Any]], Any]) -> None:
    c = load_compose()
    mutate(c)
    assert compose_security_problems(c)
