"""Kafka over SASL_SSL for real (issue 12): a throwaway KRaft broker whose client listener only
speaks TLS + SCRAM-SHA-512; the platform's clients, configured by MD_KAFKA_* settings alone, create
topics, produce and consume through it, and a wrong password or a plaintext client gets nothing.
The broker enforces ACLs (StandardAuthorizer): core/kafka_acls.py's per-principal bindings are
applied by md-bootstrap, after which a gateway principal cannot produce to the input topic.

The broker is the project's own Kafka (var/cache/kafka-libs, as deploy/local/kafka.sh runs it) in a
temporary directory on free ports, with a self-signed certificate for ``localhost``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from core.errors import ConfigError
from core.kafka import ensure_topics, make_consumer, make_producer
from core.kafka_acls import apply, platform_acls
from core.settings import Settings
from core.topics import Topics
from tests.conftest import free_port
from tests.helpers import self_signed_cert

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / "var" / "cache" / "kafka-libs"
USER, PASSWORD = "md-test", "scram-secret-123"
# principals of core/kafka_acls.py (same password here); md-test and md-bootstrap are super users
ACL_USERS = ("md-bootstrap", "md-simulator", "md-aggregator", "md-gateway-ws", "md-nobody")


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if not (LIBS / ".complete").exists() or shutil.which("java") is None:
        pytest.fail("Kafka jars or java missing: run deploy/local/install.sh (make test does)")
    d = tmp_path_factory.mktemp("kafka-sasl")
    cert, key = self_signed_cert(d)
    pem = d / "keystore.pem"
    pem.write_text(key.read_text() + cert.read_text())
    port, internal, controller = free_port(), free_port(), free_port()
    conf = d / "server.properties"
    conf.write_text(
        f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://localhost:{port},INTERNAL://127.0.0.1:{internal}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={pem}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:{USER};User:md-bootstrap
log.dirs={d / "data"}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
    )
    cp = f"{LIBS}/*"
    jopts = [
        "-Xms128m",
        "-Xmx384m",
        f"-Dkafka.logs.dir={d}",
        f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'local' / 'kafka' / 'log4j2.properties'}",
    ]
    subprocess.run(
        [
            "java",
            *jopts,
            "-cp",
            cp,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            "mdSaslTestCluster0000A",
            "-c",
            str(conf),
            "--add-scram",
            f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]",
            *(
                arg
                for u in ACL_USERS
                for arg in ("--add-scram", f"SCRAM-SHA-512=[name={u},password={PASSWORD}]")
            ),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = (d / "stdout.log").open("wb")
    proc = subprocess.Popen(
        ["java", *jopts, "-cp", cp, "kafka.Kafka", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _up(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"SASL broker did not start: {(d / 'stdout.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield port, cert
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settings(port: int, cert: Path, **over: str) -> Settings:
    env = {
        "MD_KAFKA_BOOTSTRAP": f"localhost:{port}",
        "MD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MD_KAFKA_SSL_CAFILE": str(cert),
        "MD_KAFKA_SASL_USERNAME": USER,
        "MD_KAFKA_SASL_PASSWORD": PASSWORD,
        "MD_TOPIC_PREFIX": f"sasl{os.getpid()}",
        **over,
    }
    return Settings.from_env(env)


async def test_clients_work_over_sasl_ssl(sasl_broker: tuple[int, Path]) -> None:
    port, cert = sasl_broker
    s = _settings(port, cert)
    await ensure_topics(s, partitions=1)
    topic = Topics.from_settings(s).stream("l2")
    producer = make_producer(s)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"hello":"tls"}', key=b"BTC-USD")
    finally:
        await producer.stop()
    consumer = make_consumer(s, topic)
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.value == b'{"hello":"tls"}'
    finally:
        await consumer.stop()


async def test_wrong_password_is_refused(sasl_broker: tuple[int, Path]) -> None:
    port, cert = sasl_broker
    producer = make_producer(
        _settings(port, cert, MD_KAFKA_SASL_PASSWORD="wrong"), request_timeout_ms=5000
    )
    with pytest.raises(KafkaError):
        try:
            await asyncio.wait_for(producer.start(), 20)
        finally:
            await producer.stop()


async def test_plaintext_client_gets_nothing(sasl_broker: tuple[int, Path]) -> None:
    port, _ = sasl_broker
    s = Settings.from_env({"MD_KAFKA_BOOTSTRAP": f"localhost:{port}"})
    producer = make_producer(s, request_timeout_ms=3000, metadata_max_age_ms=3000)
    with pytest.raises((KafkaError, TimeoutError)):
        try:
            await asyncio.wait_for(producer.start(), 10)
        finally:
            await producer.stop()


async def _produce(s: Settings, topic: str) -> None:
    producer = make_producer(s, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(producer.start(), 20)
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"BTC-USD"), 20)
    finally:
        await producer.stop()


async def test_acls_per_principal(sasl_broker: tuple[int, Path]) -> None:
    """INTERNAL and CONTROLLER (plaintext, loopback only) are the broker's own listeners, as
    ANONYMOUS super user; every client comes through SASL_SSL as its own principal."""
    port, cert = sasl_broker
    prefix = f"acl{os.getpid()}"

    def as_(user: str) -> Settings:
        return _settings(port, cert, MD_KAFKA_SASL_USERNAME=user, MD_TOPIC_PREFIX=prefix)

    boot = as_("md-bootstrap")
    t = Topics.from_settings(boot)
    await ensure_topics(boot, partitions=1)
    acls = platform_acls(t)
    assert await apply(boot, acls) == len(acls)
    assert await apply(boot, acls) == len(acls)  # idempotent: a second run changes nothing

    await _produce(as_("md-simulator"), t.input)  # a source writes the input
    # a gateway (or nobody) cannot: with WRITE on no topic at all, its idempotent producer does
    # not even get a producer id (InitProducerId: cluster authorization failed, KIP-679)
    refused = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)
    for user in ("md-gateway-ws", "md-nobody"):
        with pytest.raises(refused):
            await _produce(as_(user), t.input)
    with pytest.raises(refused):
        await _produce(as_("md-gateway-ws"), t.stream("l2"))  # nor forge a stream
    with pytest.raises(TopicAuthorizationFailedError):  # a source writes only the input
        await _produce(as_("md-simulator"), t.stream("l2"))
    await _produce(as_("md-aggregator"), t.stream("l2"))
    consumer = make_consumer(as_("md-gateway-ws"), t.stream("l2"))  # but reads it
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.value == b"{}"
    finally:
        await consumer.stop()
    with pytest.raises(ConfigError):  # a principal without ALTER cannot grant itself more
        await apply(as_("md-gateway-ws"), [dataclasses.replace(acls[0], principal="md-gateway-ws")])
