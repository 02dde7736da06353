"""core.kafka_acls: the per-principal bindings (the broker test, tests/integration/
test_security_kafka_sasl.py, shows a broker enforcing them)."""

from __future__ import annotations

from core.kafka_acls import USERS, Acl, Op, Pattern, Resource, platform_acls
from core.topics import Topics

T = Topics("md")
ACLS = platform_acls(T)


def _can(user: str, op: Op, topic: str) -> bool:
    for a in ACLS:
        if a.principal != user or a.resource is not Resource.TOPIC or a.op not in (op, Op.ALL):
            continue
        if a.name == topic if a.pattern is Pattern.LITERAL else topic.startswith(a.name):
            return True
    return False


def test_only_sources_write_the_input_and_only_the_aggregator_the_streams() -> None:
    writers_in = {u for u in USERS.values() if _can(u, Op.WRITE, T.input)}
    assert writers_in == {"md-simulator", "md-bootstrap"}
    for topic in (*T.all_streams(), T.snapshot, T.control):
        assert {u for u in USERS.values() if _can(u, Op.WRITE, topic)} == {
            "md-aggregator",
            "md-bootstrap",
        }


def test_followers_read_the_outputs_and_not_the_input() -> None:
    for user in ("md-gateway-ws", "md-fix-gateway", "md-storage"):
        assert all(_can(user, Op.READ, t) for t in (*T.all_streams(), T.snapshot))
        assert not _can(user, Op.READ, T.input) and not _can(user, Op.CREATE, T.input)
        assert not any(a.resource is Resource.CLUSTER for a in ACLS if a.principal == user)


def test_bindings_follow_the_prefix_and_print_as_kafka_acls_arguments() -> None:
    other = platform_acls(Topics("test1"))
    assert all(a.name.startswith("test1.") for a in other if a.resource is not Resource.CLUSTER)
    a = Acl("md-simulator", Resource.TOPIC, "md.in", Pattern.LITERAL, Op.WRITE)
    assert a.cli_args() == [
        "--allow-principal",
        "User:md-simulator",
        "--operation",
        "Write",
        "--topic",
        "md.in",
        "--resource-pattern-type",
        "literal",
    ]
