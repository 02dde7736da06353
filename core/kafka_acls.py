"""Who may do what on the platform's Kafka (issue 12, docs/security.md "Kafka ACLs").

Every workload connects with a SASL principal of its own (``MD_KAFKA_SASL_USERNAME``:
``md-<workload>``, deploy/k8s/10-config.yaml). With an authorizer on the brokers (KRaft's
``StandardAuthorizer``: everything not allowed is denied) these ACLs are the whole of what each
may do; a compromised gateway pod cannot write forged events into ``<prefix>.in``:

=============== ==========================================================================
principal       allowed
=============== ==========================================================================
md-bootstrap    everything on ``<prefix>.*`` topics, groups and transactional ids (it creates
                and configures the topics, warms the coordinators up, applies these ACLs)
md-simulator    write ``in``; create/describe ``<prefix>.*`` topics (a source creates missing
                ones); the same for every other source principal (``SOURCE_USERS``)
md-aggregator   read ``in``; read and write the streams, ``snapshot`` and ``agg`` (recovery
                reads its own outputs, the standby the leader's heartbeats); create/describe
                ``<prefix>.*`` topics; its consumer group ``<prefix>.aggregator*``
md-storage      read the streams and ``snapshot``; its groups ``<prefix>.storage*``
md-gateway-ws,  read the streams and ``snapshot`` (no consumer group: the follower assigns
md-fix-gateway  partitions itself)
=============== ==========================================================================

Topics are matched by name (``LITERAL``) or by the ``<prefix>.`` prefix (``PREFIXED``). Idempotent
producers need no cluster ACL since Kafka 3.0 (KIP-679: ``WRITE`` on a topic implies it).

``python -m core.kafka_acls print`` lists the bindings as ``kafka-acls.sh`` arguments;
``python -m core.kafka_acls apply`` creates them (CreateAcls is idempotent: an existing identical
binding is left as it is) with the process's own Kafka settings, as ``md-bootstrap``, which the
cluster's operator makes a super user (or grants ``ALTER`` on the cluster) once. The Kubernetes
bootstrap Job runs it before creating the topics (deploy/k8s/30-jobs.yaml).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from core.errors import ConfigError
from core.kafka_auth import kafka_security_options
from core.settings import Settings
from core.topics import Topics


class Resource(IntEnum):
    """Kafka's ResourceType codes (org.apache.kafka.common.resource.ResourceType)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Pattern(IntEnum):
    """PatternType codes (KIP-290)."""

    LITERAL = 3
    PREFIXED = 4


class Op(IntEnum):
    """AclOperation codes."""

    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8


ALLOW = 3  # AclPermissionType.ALLOW

# workload -> SASL user (deploy/k8s/10-config.yaml's md-kafka-<workload> Secrets)
USERS: dict[str, str] = {
    w: f"md-{w}"
    for w in ("bootstrap", "simulator", "aggregator", "storage", "gateway-ws", "fix-gateway")
}
SOURCE_USERS = ("md-simulator",)  # principals that may write the input topic
FOLLOWER_USERS = ("md-gateway-ws", "md-fix-gateway")


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: ``principal`` may ``op`` on the resource (from any host)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    op: Op

    def cli_args(self) -> list[str]:
        """The same binding as ``kafka-acls.sh --add`` arguments."""
        flag = {
            Resource.TOPIC: "--topic",
            Resource.GROUP: "--group",
            Resource.TRANSACTIONAL_ID: "--transactional-id",
            Resource.CLUSTER: "--cluster",
        }[self.resource]
        where = [flag] if self.resource is Resource.CLUSTER else [flag, self.name]
        return [
            "--allow-principal",
            f"User:{self.principal}",
            "--operation",
            self.op.name.title().replace("_", ""),
            *where,
            "--resource-pattern-type",
            self.pattern.name.lower(),
        ]


def platform_acls(t: Topics, users: Mapping[str, str] = USERS) -> list[Acl]:
    """Every binding the platform needs on prefix ``t.prefix`` (see the module docstring)."""
    p = f"{t.prefix}."
    out: list[Acl] = []

    def add(user: str, res: Resource, name: str, pat: Pattern, *ops: Op) -> None:
        out.extend(Acl(user, res, name, pat, op) for op in ops)

    outputs = [*t.all_streams(), t.snapshot]
    for res in (Resource.TOPIC, Resource.GROUP, Resource.TRANSACTIONAL_ID):
        add(users["bootstrap"], res, p, Pattern.PREFIXED, Op.ALL)
    for user in SOURCE_USERS:
        add(user, Resource.TOPIC, t.input, Pattern.LITERAL, Op.WRITE)
        add(user, Resource.TOPIC, p, Pattern.PREFIXED, Op.CREATE, Op.DESCRIBE)
    agg = users["aggregator"]
    add(agg, Resource.TOPIC, p, Pattern.PREFIXED, Op.CREATE, Op.DESCRIBE)
    add(agg, Resource.TOPIC, t.input, Pattern.LITERAL, Op.READ)
    for name in (*outputs, t.control):
        add(agg, Resource.TOPIC, name, Pattern.LITERAL, Op.READ, Op.WRITE)
    add(agg, Resource.GROUP, f"{p}aggregator", Pattern.PREFIXED, Op.READ, Op.DESCRIBE)
    store = users["storage"]
    add(store, Resource.GROUP, f"{p}storage", Pattern.PREFIXED, Op.READ, Op.DESCRIBE)
    for user in (store, *FOLLOWER_USERS):
        for name in outputs:
            add(user, Resource.TOPIC, name, Pattern.LITERAL, Op.READ, Op.DESCRIBE)
    return sorted(out)


async def apply(s: Settings, acls: Iterable[Acl]) -> int:
    """Create ``acls`` on the cluster of ``s`` (as its principal); how many were sent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, **kafka_security_options(s))
    await admin.start()
    n = 0
    try:
        for a in acls:
            req = CreateAclsRequest(
                a.resource, a.name, a.pattern, f"User:{a.principal}", "*", a.op, ALLOW
            )
            # aiokafka has no public ACL call; its admin client sends any protocol request
            resp = await admin._send_request(req)  # noqa: SLF001
            for code, message in resp.creation_responses:
                if code:
                    raise ConfigError(
                        "MD_KAFKA_SASL_USERNAME",
                        f"CreateAcls {a} refused (error {code}: {message}); the principal needs "
                        "ALTER on the cluster (docs/security.md)",
                    )
            n += 1
    finally:
        await admin.close()
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("print", "apply"):
        print("usage: python -m core.kafka_acls print|apply", file=sys.stderr)
        return 2
    s = Settings.from_env()
    acls = platform_acls(Topics.from_settings(s))
    if argv[0] == "print":
        for a in acls:
            print("kafka-acls.sh --bootstrap-server ... --add " + " ".join(a.cli_args()))
        return 0
    n = asyncio.run(apply(s, acls))
    print(f"[kafka_acls] {n} ACL bindings in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
