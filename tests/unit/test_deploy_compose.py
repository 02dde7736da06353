"""docker-compose.yml against the Compose specification and against what `make run` does.

No Docker engine runs here, so the file is validated, not started:

- the Compose specification's JSON schema (check-jsonschema's vendored ``compose-spec``);
- every service of ``deploy/local/services.conf`` is a compose service with the same command, the
  same health URL (port and path) in its health check, the one image built by ./Dockerfile, a
  restart policy, and the infrastructure as healthy dependencies;
- every ``MD_*`` variable set is one the code reads, ports equal ``core/settings.py`` defaults,
  and the Kafka/PostgreSQL/Redis URLs point at compose services that listen there;
- Kafka is durable: at least three KRaft brokers with a controller quorum of all of them, and
  every process that may create topics does so with replication factor 3 and min ISR 2
  (``MD_KAFKA_REPLICATION_FACTOR``, ``MD_KAFKA_MIN_ISR``);
- the aggregator runs as a pair (two instances, each with its own ``MD_AGG_ID``);
- Prometheus scrapes every service on its services.conf port.

``compose_problems`` returns a list of human-readable problems; the tests also prove it fails on
broken variants (a deleted service, a changed command, a wrong port), so it is not vacuous.
The helpers here are imported by the other tests/unit/test_deploy_*.py modules.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from core.errors import MarketDataError
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES_CONF = ROOT / "deploy" / "local" / "services.conf"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
CODE_DIRS = ("core", "aggregator", "storage", "gateway_ws", "gateway_rest", "fix_gateway")
INFRA = ("kafka", "timescaledb", "redis")
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}


@dataclass(frozen=True)
class ConfService:
    name: str
    health_url: str | None
    command: tuple[str, ...]

    @property
    def port(self) -> int | None:
        return urlsplit(self.health_url).port if self.health_url else None

    @property
    def module(self) -> str:
        """Top-level package of ``python -m pkg.sub`` (what the image must contain)."""
        return self.command[self.command.index("-m") + 1].split(".")[0]


def load_services_conf(path: Path = SERVICES_CONF) -> list[ConfService]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, url, cmd = (p.strip() for p in line.split("|"))
        url = re.sub(
            r"\$\{MD_[A-Z0-9_]+:-([^}]*)\}", r"\1", url
        )  # ${MD_X_PORT:-8011} -> its default
        out.append(ConfService(name, None if url == "-" else url, tuple(shlex.split(cmd))))
    assert out, f"no services in {path}"
    return out


def known_md_vars() -> set[str]:
    """Every MD_* name that the code or the local scripts read (a typo in compose is caught)."""
    names: set[str] = set()
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]
    files += list((ROOT / "deploy" / "local").glob("*.sh"))
    files += list((ROOT / "gateway_rest").glob("web_page.py"))
    for f in files:
        names.update(re.findall(r"\bMD_[A-Z0-9_]+\b", f.read_text(errors="replace")))
    return names


def settings_var_defaults() -> dict[str, Any]:
    """MD_* variable of core/settings.py -> its default value (found by setting each one)."""
    src = (ROOT / "core" / "settings.py").read_text()
    base = Settings.from_env({})
    out: dict[str, Any] = {}
    for var in sorted(set(re.findall(r'"(MD_[A-Z0-9_]+)"', src))):
        for probe in ("1", "127.0.0.1:1", "BTC-USD"):
            try:
                changed = Settings.from_env({var: probe})
            except MarketDataError:  # not a value this variable takes (ConfigError, SymbolError)
                continue
            diff = [
                f
                for f in base.__dataclass_fields__
                if f != "extra" and getattr(base, f) != getattr(changed, f)
            ]
            if diff:
                out[var] = getattr(base, diff[0])
                break
    return out


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    # JSON round trip: YAML aliases (*app-env) become independent copies, so a test can mutate one
    return json.loads(json.dumps(yaml.safe_load(path.read_text())))


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _command(svc: dict[str, Any]) -> tuple[str, ...]:
    cmd = svc.get("command")
    if isinstance(cmd, str):
        return tuple(shlex.split(cmd))
    return tuple(cmd or ())


def _health_text(svc: dict[str, Any]) -> str:
    test = (svc.get("healthcheck") or {}).get("test") or []
    return " ".join(test) if isinstance(test, list) else str(test)


# Compose acts on an exit (restart policy), never on a failing health check, and shows the
# health in `docker compose ps` and to `depends_on`/`up --wait`: "can it serve", readiness
# (core/health.py). services.conf keeps the combined /health (the same verdict) for `make up`.
COMPOSE_HEALTH_PATH = "/health/ready"


def compose_health_url(conf_url: str) -> str:
    """The URL compose's health check calls for a services.conf health URL (same port)."""
    return urlsplit(conf_url)._replace(path=COMPOSE_HEALTH_PATH).geturl()


def _published(svc: dict[str, Any]) -> set[tuple[int, int]]:
    out = set()
    for p in svc.get("ports") or []:
        parts = str(p).split(":")
        out.add((int(parts[-2]), int(parts[-1])))
    return out


def _strip_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose substitutes when VAR is unset)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def command_port(command: tuple[str, ...]) -> int | None:
    """The port a ``--http-port N`` argument sets (services.conf's second aggregator), if any."""
    if "--http-port" not in command[:-1]:
        return None
    return int(_strip_default(command[command.index("--http-port") + 1]))


def compose_problems(compose: dict[str, Any], conf: list[ConfService]) -> list[str]:
    problems: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    defaults = settings_var_defaults()
    known = known_md_vars()
    image = None
    for cs in conf:
        svc = services.get(cs.name)
        if svc is None:
            problems.append(f"{cs.name}: in services.conf but not in docker-compose.yml")
            continue
        if _command(svc) != cs.command:
            problems.append(f"{cs.name}: command {_command(svc)} != services.conf {cs.command}")
        if not svc.get("build") or svc["build"].get("dockerfile", "Dockerfile") != "Dockerfile":
            problems.append(f"{cs.name}: not built from ./Dockerfile")
        image = image or svc.get("image")
        if svc.get("image") != image:
            problems.append(
                f"{cs.name}: image {svc.get('image')} differs from {image} (one image for all)"
            )
        env = _env(svc)
        restart = svc.get("restart")
        if cs.health_url is None:  # one-shot (migrate)
            if restart not in ("no", None):
                problems.append(f"{cs.name}: one-shot but restart={restart!r}")
        else:
            problems += _long_running_problems(cs, svc, env, conf, defaults)
        problems += _env_problems(cs.name, env, known, defaults)
        problems += _infra_url_problems(cs.name, env, services)
    # the public listeners are published on the same host port as `make run` uses
    for name, var in (
        ("gateway_rest", "MD_REST_PORT"),
        ("gateway_ws", "MD_WS_PORT"),
        ("fix_gateway", "MD_FIX_PORT"),
    ):
        if name in services and (defaults[var], defaults[var]) not in _published(services[name]):
            problems.append(f"{name}: does not publish {defaults[var]}:{defaults[var]}")
    for infra in INFRA:
        if infra not in services:
            problems.append(f"{infra}: missing")
        elif not (services[infra].get("healthcheck") or {}).get("test"):
            problems.append(f"{infra}: no health check")
    return problems


def _long_running_problems(
    cs: ConfService,
    svc: dict[str, Any],
    env: dict[str, str],
    conf: list[ConfService],
    defaults: dict[str, Any],
) -> list[str]:
    """A long-running service: restarts, health check on its URL, waits for the infrastructure
    and the one-shots, its port exposed and set."""
    problems: list[str] = []
    assert cs.health_url is not None
    restart = svc.get("restart")
    if restart not in LONG_RUNNING_RESTART:
        problems.append(
            f"{cs.name}: restart={restart!r}, want one of {sorted(LONG_RUNNING_RESTART)}"
        )
    want = compose_health_url(cs.health_url)
    # a gateway with TLS (docs/security.md) checks the same URL over https
    called = [
        re.sub(r"^https://", "http://", u)
        for u in re.findall(r"https?://[^\s'\"]+", _health_text(svc))
    ]
    if called != [want]:
        problems.append(f"{cs.name}: health check does not call {want} ({_health_text(svc)!r})")
    deps = svc.get("depends_on") or {}
    for infra in INFRA:
        if (deps.get(infra) or {}).get("condition") != "service_healthy":
            problems.append(f"{cs.name}: does not wait for {infra} to be healthy")
    for one_shot in (c.name for c in conf if c.health_url is None):
        if (deps.get(one_shot) or {}).get("condition") != "service_completed_successfully":
            problems.append(f"{cs.name}: does not wait for {one_shot} to complete")
    port_vars = [k for k, v in env.items() if k.endswith("_PORT") and v == str(cs.port)]
    exposed = {int(str(e)) for e in svc.get("expose") or []} | {c for _, c in _published(svc)}
    if cs.port not in exposed:
        problems.append(f"{cs.name}: port {cs.port} neither exposed nor published")
    if not port_vars and cs.port not in defaults.values() and command_port(cs.command) != cs.port:
        problems.append(f"{cs.name}: no MD_*_PORT sets {cs.port} and no setting defaults to it")
    return problems


def _env_problems(
    name: str, env: dict[str, str], known: set[str], defaults: dict[str, Any]
) -> list[str]:
    """The service's MD_* variables: each read by some code, each port the one make run uses."""
    problems: list[str] = []
    for k, v in env.items():
        if k.startswith("MD_") and k not in known:
            problems.append(f"{name}: {k} is read by no code (typo?)")
        if k.endswith("_PORT") and k in defaults and int(_strip_default(v)) != defaults[k]:
            problems.append(
                f"{name}: {k}={v} but core/settings.py default is {defaults[k]} (make run uses that)"
            )
    return problems


def _infra_url_problems(name: str, env: dict[str, str], services: dict[str, Any]) -> list[str]:
    out: list[str] = []
    default_db = urlsplit(Settings().pg_dsn).path
    boot = _strip_default(env.get("MD_KAFKA_BOOTSTRAP", ""))
    for server in boot.split(","):  # each bootstrap server is a listener its broker advertises
        host, _, port = server.strip().partition(":")
        listeners = _env(services.get(host, {})).get("KAFKA_ADVERTISED_LISTENERS", "")
        if not host or f"//{host}:{port}" not in listeners:
            out.append(
                f"{name}: MD_KAFKA_BOOTSTRAP={boot!r}: {server!r} is not an advertised listener"
                f" of a compose service {host!r} ({listeners!r})"
            )
    dsn = urlsplit(_strip_default(env.get("MD_PG_DSN", "")))
    if dsn.hostname != "timescaledb" or dsn.port != 5432 or dsn.path != default_db:
        out.append(
            f"{name}: MD_PG_DSN should be timescaledb:5432{default_db}, got {env.get('MD_PG_DSN')!r}"
        )
    elif _env(services.get("timescaledb", {})).get("POSTGRES_DB") != default_db.strip("/"):
        out.append(f"{name}: timescaledb does not create database {default_db}")
    r = urlsplit(env.get("MD_REDIS_URL", ""))
    if r.hostname != "redis" or r.port != 6379:
        out.append(
            f"{name}: MD_REDIS_URL should point at redis:6379, got {env.get('MD_REDIS_URL')!r}"
        )
    return out


def kafka_brokers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in (compose.get("services") or {}).items()
        if str(svc.get("image", "")).startswith("apache/kafka")
    }


def _depends(svc: dict[str, Any]) -> dict[str, Any]:
    deps = svc.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


# what a production topic needs: 3 copies, acks=all writes need 2 of them (one broker may be lost)
TOPIC_RF, TOPIC_MIN_ISR = 3, 2
# each stream topic spread over the brokers (the local single broker makes them 1 partition)
STREAM_PARTITIONS = 6


def _volume_sources(svc: dict[str, Any], target: str | None = None) -> set[str]:
    out = set()
    for v in svc.get("volumes") or []:
        parts = str(v).split(":")
        if len(parts) > 1 and (target is None or parts[1] == target):
            out.add(parts[0])
    return out


def kafka_durability_problems(compose: dict[str, Any], conf: list[ConfService]) -> list[str]:
    """Three or more KRaft brokers in one controller quorum, topics created with RF 3 / min ISR 2."""
    problems: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    brokers = kafka_brokers(compose)
    if len(brokers) < TOPIC_RF:
        problems.append(f"{len(brokers)} Kafka broker(s) cannot host replication factor {TOPIC_RF}")
    ids = {name: _env(svc).get("KAFKA_NODE_ID", "") for name, svc in brokers.items()}
    if len(set(ids.values())) != len(ids):
        problems.append(f"Kafka node ids are not unique: {ids}")
    want_voters = {(nid, name) for name, nid in ids.items()}
    cluster_ids = {_env(svc).get("CLUSTER_ID") for svc in brokers.values()}
    if len(cluster_ids) != 1 or None in cluster_ids:
        problems.append(f"the brokers do not share one CLUSTER_ID: {cluster_ids}")
    for name, svc in brokers.items():
        problems += _broker_problems(name, svc, brokers, want_voters)
    # bootstrap creates the topics; the sources and the aggregators create missing ones too, so
    # every process that reaches Kafka gets the same topic settings and waits for every broker
    for name in ["bootstrap"] + [cs.name for cs in conf if cs.health_url]:
        if name not in services:
            problems.append(f"{name}: missing")
            continue
        problems += _kafka_client_problems(name, services[name], brokers)
    return problems


def _broker_problems(
    name: str, svc: dict[str, Any], brokers: dict[str, Any], want_voters: set[tuple[str, str]]
) -> list[str]:
    """One KRaft broker: combined roles, the whole quorum, replicated defaults, its own volume."""
    problems: list[str] = []
    env = _env(svc)
    if set(env.get("KAFKA_PROCESS_ROLES", "").split(",")) != {"broker", "controller"}:
        problems.append(f"{name}: not a combined broker,controller node")
    voters = {
        (v.partition("@")[0], v.partition("@")[2].partition(":")[0])
        for v in env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",")
    }
    if voters != want_voters:
        problems.append(f"{name}: controller quorum {sorted(voters)} != {sorted(want_voters)}")
    # the broker defaults, so Kafka's own topics (offsets, transactions) are replicated too
    for var, want in (
        ("KAFKA_DEFAULT_REPLICATION_FACTOR", TOPIC_RF),
        ("KAFKA_MIN_INSYNC_REPLICAS", TOPIC_MIN_ISR),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", TOPIC_RF),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", TOPIC_RF),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", TOPIC_MIN_ISR),
    ):
        if env.get(var) != str(want):
            problems.append(f"{name}: {var}={env.get(var)!r}, want {want}")
    data = _volume_sources(svc, env.get("KAFKA_LOG_DIRS", ""))
    if len(data) != 1 or any(d.startswith((".", "/")) for d in data):
        problems.append(f"{name}: KAFKA_LOG_DIRS is not on a named volume of its own")
    for other, osvc in brokers.items():
        if other != name and data & _volume_sources(osvc):
            problems.append(f"{name}: shares its data volume with {other}")
    if _depends(svc).keys() & brokers.keys():
        problems.append(f"{name}: waits for another broker (the quorum needs them together)")
    return problems


def _kafka_client_problems(name: str, svc: dict[str, Any], brokers: dict[str, Any]) -> list[str]:
    """A process that reaches Kafka: waits for every broker, creates topics with RF 3 / min ISR 2,
    bootstraps from every broker."""
    problems: list[str] = []
    env = _env(svc)
    for b in brokers:
        if (_depends(svc).get(b) or {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for broker {b} to be healthy")
    for var, want in (
        ("MD_KAFKA_REPLICATION_FACTOR", TOPIC_RF),
        ("MD_KAFKA_MIN_ISR", TOPIC_MIN_ISR),
        ("MD_KAFKA_STREAM_PARTITIONS", STREAM_PARTITIONS),
    ):
        got = _strip_default(env.get(var, ""))
        if got != str(want):
            problems.append(f"{name}: {var}={got or 'unset (1)'}, want {want}")
    boot = {b.strip().partition(":")[0] for b in env.get("MD_KAFKA_BOOTSTRAP", "").split(",")}
    if not brokers.keys() <= boot:
        problems.append(f"{name}: MD_KAFKA_BOOTSTRAP does not list every broker")
    return problems


FEED_FOLLOWERS = ("gateway_ws", "fix_gateway")  # core.follower.StreamFollower reads MD_AGG_FEED


def aggregator_pair_problems(compose: dict[str, Any]) -> list[str]:
    """Two or more ``python -m aggregator`` services (leader + hot standby), told apart by MD_AGG_ID."""
    services: dict[str, Any] = compose.get("services") or {}
    aggs = {
        name: svc
        for name, svc in services.items()
        if _command(svc)[:3] == ("python", "-m", "aggregator")
    }
    problems: list[str] = []
    if len(aggs) < 2:
        problems.append(f"{len(aggs)} aggregator instance(s): a leader needs a hot standby")
    idents = {name: _env(svc).get("MD_AGG_ID", "") for name, svc in aggs.items()}
    if "" in idents.values() or len(set(idents.values())) != len(idents):
        problems.append(f"aggregators without their own MD_AGG_ID: {idents}")
    if len({_env(svc).get("MD_AGG_PARTITIONS", "") for svc in aggs.values()}) > 1:
        problems.append("the aggregators of the pair read different MD_AGG_PARTITIONS")
    # the direct feeds (core/feed.py): each aggregator's feed is reachable from the other
    # containers, and the followers (gateways) connect to every one of them
    feeds = set()
    for name, svc in aggs.items():
        env, cmd = _env(svc), _command(svc)
        port = env.get("MD_AGG_FEED_PORT", "0")
        if "--feed-port" in cmd[:-1]:
            port = _strip_default(cmd[cmd.index("--feed-port") + 1])
        if port != "0":
            feeds.add(f"{name}:{port}")
            if env.get("MD_AGG_FEED_HOST") != "0.0.0.0":
                problems.append(f"{name}: its direct feed listens on loopback only")
    for gw in FEED_FOLLOWERS:
        listed = {a.strip() for a in _env(services.get(gw, {})).get("MD_AGG_FEED", "").split(",")}
        if listed - {""} != feeds:
            problems.append(f"{gw}: MD_AGG_FEED {sorted(listed - {''})} != feeds {sorted(feeds)}")
    return problems


# ------------------------------------------------------------------ tests


def test_compose_matches_the_compose_spec_schema() -> None:
    r = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = load_compose()
    bad["services"]["gateway_rest"]["comand"] = ["typo"]  # unknown key
    bad["services"]["redis"]["ports"] = "6379"  # wrong type
    f = tmp_path / "docker-compose.yml"
    f.write_text(yaml.safe_dump(bad))
    r = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0


def test_compose_mirrors_services_conf_and_settings() -> None:
    problems = compose_problems(load_compose(), load_services_conf())
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["services"].pop("aggregator"), id="service-deleted"),
        pytest.param(
            lambda c: c["services"]["gateway_ws"].update(command=["python", "-m", "gateway_rest"]),
            id="command-changed",
        ),
        pytest.param(
            lambda c: c["services"]["gateway_rest"]["environment"].update(MD_REST_PORT="8080"),
            id="port-changed",
        ),
        pytest.param(
            lambda c: c["services"]["storage"].pop("healthcheck"), id="healthcheck-removed"
        ),
        pytest.param(lambda c: c["services"]["simulator"].update(restart="no"), id="no-restart"),
        pytest.param(
            lambda c: c["services"]["fix_gateway"]["environment"].update(MD_FIX_PROT="1"),
            id="unknown-var",
        ),
        pytest.param(
            lambda c: c["services"]["storage"]["environment"].update(
                MD_PG_DSN="postgresql://postgres@db:5432/x"
            ),
            id="bad-dsn",
        ),
        pytest.param(
            lambda c: c["services"]["gateway_ws"].update(ports=["18001:8001"]), id="not-published"
        ),
        pytest.param(lambda c: c["services"].pop("redis"), id="infra-deleted"),
        pytest.param(
            lambda c: c["services"]["gateway_rest"]["healthcheck"].update(
                test=[
                    "CMD",
                    "python",
                    "-c",
                    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)",
                ]
            ),
            id="healthcheck-on-combined-health",
        ),
        pytest.param(
            lambda c: c["services"]["storage"]["healthcheck"].update(
                test=["CMD-SHELL", "curl -f http://127.0.0.1:8012/health/live"]
            ),
            id="healthcheck-on-liveness",
        ),
    ],
)
def test_checker_catches_drift(mutate: Any) -> None:
    c = load_compose()
    mutate(c)
    assert compose_problems(c, load_services_conf())


def test_health_checks_before_issue_11_are_rejected() -> None:
    """Every service's health check on the combined /health (the file before issue 11)."""
    c = load_compose()
    for svc in c["services"].values():
        hc = svc.get("healthcheck") or {}
        if isinstance(hc.get("test"), list):
            hc["test"] = [x.replace("/health/ready", "/health") for x in hc["test"]]
    problems = compose_problems(c, load_services_conf())
    flagged = {p.split(":")[0] for p in problems if "health check does not call" in p}
    assert flagged == {cs.name for cs in load_services_conf() if cs.health_url}, problems


def test_compose_kafka_is_replicated_and_topics_are_durable() -> None:
    problems = kafka_durability_problems(load_compose(), load_services_conf())
    assert problems == [], "\n".join(problems)


def test_compose_runs_the_aggregator_pair() -> None:
    assert aggregator_pair_problems(load_compose()) == []
    assert (
        sum(
            cs.module == "aggregator" and cs.command[2] == "aggregator"
            for cs in load_services_conf()
        )
        >= 2
    )


def _set_env(service: str, **env: str):
    return lambda c: c["services"][service]["environment"].update(env)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["services"].pop("kafka-3"), id="broker-deleted"),
        pytest.param(_set_env("bootstrap", MD_KAFKA_REPLICATION_FACTOR="1"), id="bootstrap-rf-1"),
        pytest.param(
            _set_env("bootstrap", MD_KAFKA_STREAM_PARTITIONS="1"),
            id="bootstrap-streams-1-partition",
        ),
        pytest.param(
            lambda c: c["services"]["bootstrap"]["environment"].pop("MD_KAFKA_MIN_ISR"),
            id="bootstrap-isr-unset",
        ),
        pytest.param(_set_env("aggregator_b", MD_KAFKA_MIN_ISR="1"), id="aggregator-isr-1"),
        pytest.param(
            _set_env("kafka-2", KAFKA_CONTROLLER_QUORUM_VOTERS="2@kafka-2:9093"), id="own-quorum"
        ),
        pytest.param(_set_env("kafka", KAFKA_MIN_INSYNC_REPLICAS="1"), id="broker-min-isr-1"),
        pytest.param(_set_env("kafka-3", KAFKA_NODE_ID="2"), id="duplicate-node-id"),
        pytest.param(
            lambda c: c["services"]["kafka-2"].update(volumes=["kafka-1-data:/var/lib/kafka/data"]),
            id="shared-volume",
        ),
        pytest.param(
            lambda c: c["services"]["bootstrap"]["depends_on"].pop("kafka-2"),
            id="bootstrap-before-broker",
        ),
    ],
)
def test_durability_checker_catches_drift(mutate: Any) -> None:
    c = load_compose()
    mutate(c)
    assert kafka_durability_problems(c, load_services_conf())


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["services"].pop("aggregator_b"), id="standby-deleted"),
        pytest.param(_set_env("aggregator_b", MD_AGG_ID="aggregator"), id="same-id"),
        pytest.param(_set_env("aggregator_b", MD_AGG_PARTITIONS="0,1"), id="other-partitions"),
        pytest.param(
            lambda c: c["services"]["aggregator_b"]["environment"].pop("MD_AGG_FEED_HOST"),
            id="feed-on-loopback",
        ),
        pytest.param(_set_env("gateway_ws", MD_AGG_FEED="aggregator:8031"), id="one-feed-only"),
    ],
)
def test_pair_checker_catches_drift(mutate: Any) -> None:
    c = load_compose()
    mutate(c)
    assert aggregator_pair_problems(c)


def test_readme_names_only_settings_that_exist() -> None:
    """A setting the code stopped reading (MD_AGG_TXN_MS, MD_AGG_SESSION_MS) leaves the README too."""
    known = known_md_vars() | set(re.findall(r"\bMD_[A-Z0-9_]+\b", SERVICES_CONF.read_text()))
    readme = (ROOT / "README.md").read_text()
    named = {v for v in re.findall(r"\bMD_[A-Z0-9_]+\b", readme) if not v.endswith("_")}
    assert named - known == set(), "README names settings that nothing reads"


def test_a_service_added_to_services_conf_must_be_in_compose(tmp_path: Path) -> None:
    conf = tmp_path / "services.conf"
    conf.write_text(
        SERVICES_CONF.read_text()
        + "replay | http://127.0.0.1:8015/health | python -m aggregator.sources.replay\n"
    )
    problems = compose_problems(load_compose(), load_services_conf(conf))
    assert any(p.startswith("replay:") for p in problems), problems


def test_dockerfile_contains_every_service_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
    needed = {cs.module for cs in load_services_conf()} | {"core"}
    assert needed <= copied, f"Dockerfile does not COPY {sorted(needed - copied)}"
    assert "npm run build" in text and "web/dist" in text  # the live page is bundled into the image


def _scrape_targets(path: Path) -> dict[str, set[str]]:
    cfg = yaml.safe_load(path.read_text())
    return {
        j["job_name"]: {t for sc in j.get("static_configs", []) for t in sc["targets"]}
        for j in cfg["scrape_configs"]
    }


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    compose_targets = _scrape_targets(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    local_targets = _scrape_targets(ROOT / "deploy" / "prometheus" / "prometheus.local.yml")
    compose = load_compose()
    for cs in load_services_conf():
        if cs.port is None:
            continue
        # a gateway with MD_*_METRICS_PORT serves /metrics there, not on its public port
        env = _env(compose["services"][cs.name])
        port = next((v for k, v in env.items() if k.endswith("_METRICS_PORT")), cs.port)
        assert f"{cs.name}:{port}" in compose_targets.get(cs.name, set()), cs.name
        assert f"127.0.0.1:{cs.port}" in local_targets.get(cs.name, set()), cs.name
    # compose mounts the folder holding prometheus.yml and alerts.yml
    vols = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in vols
    assert yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())[
        "rule_files"
    ] == ["/etc/prometheus/alerts.yml"]


def test_ops_dependencies_are_provisioned() -> None:
    s = load_compose()["services"]
    assert {"prometheus", "grafana"} <= s.keys()
    gvols = s["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in gvols
    assert any(v.startswith("./deploy/grafana/dashboards:") for v in gvols)
    # every bind-mounted path exists in the repository
    for name, svc in s.items():
        for v in svc.get("volumes") or []:
            src = str(v).split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
