"""docker-compose.yml's Kafka and PostgreSQL TLS settings, run for real (issue 12).

No Docker engine runs here, so compose itself is only validated (tests/unit/test_security_manifests.py).
This runs the same settings on the project's own servers: a Kafka node built from compose's
``KAFKA_*`` environment (converted to properties as the apache/kafka image does) with every listener
on TLS, and a PostgreSQL with compose's ``ssl`` options and the repository's
``deploy/compose/pg_hba.conf``, both with a certificate from ``python -m core.tls self-signed``.
The platform's clients, configured as compose configures them, connect; plaintext ones cannot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from core.kafka import ensure_topics, make_consumer, make_producer
from core.settings import Settings
from core.tls import write_self_signed
from core.topics import Topics
from tests.conftest import free_port
from tests.integration.test_storage_db_outage import PGBIN, ThrowawayPostgres
from tests.unit.test_deploy_compose import _env, load_compose

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / "var" / "cache" / "kafka-libs"
NAMES = ("kafka", "kafka-2", "kafka-3", "timescaledb", "localhost", "127.0.0.1")
# settings of the image itself, not broker properties (apache/kafka's docker/run script)
NOT_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_JMX_OPTS"}
CLIENT_TLS = {
    "MD_KAFKA_SECURITY_PROTOCOL",
    "MD_KAFKA_SSL_CAFILE",
    "MD_PG_SSLMODE",
    "MD_PG_SSLROOTCERT",
}


def image_properties(env: dict[str, str]) -> dict[str, str]:
    """``KAFKA_FOO_BAR`` -> ``foo.bar`` (``__`` -> ``_``, ``___`` -> ``-``), as the image does."""
    out = {}
    for k, v in env.items():
        if k.startswith("KAFKA_") and k not in NOT_PROPERTIES:
            name = k[6:].lower().replace("___", "-").replace("__", "\0").replace("_", ".")
            out[name.replace("\0", "_")] = v
    return out


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls-internal")
    write_self_signed(str(d), NAMES[0], also=NAMES[1:])
    return d


@pytest.fixture(scope="module")
def compose_kafka(tls_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not (LIBS / ".complete").exists() or shutil.which("java") is None:
        pytest.fail("Kafka jars or java missing: run deploy/local/install.sh (make test does)")
    env = _env(load_compose()["services"]["kafka"])
    props = image_properties(env)
    d = tmp_path_factory.mktemp("kafka-compose-tls")
    port, ctrl, ext = free_port(), free_port(), free_port()
    # compose's TLS settings as they are; the files from our directory; one node on free ports
    tls = {k: v for k, v in props.items() if k.startswith("ssl.")}
    tls = {k: str(tls_dir / Path(v).name) if k.endswith(".location") else v for k, v in tls.items()}
    conf = {
        **tls,
        "listener.security.protocol.map": props["listener.security.protocol.map"],
        "inter.broker.listener.name": props["inter.broker.listener.name"],
        "controller.listener.names": props["controller.listener.names"],
        "process.roles": props["process.roles"],
        "node.id": "1",
        "controller.quorum.voters": f"1@localhost:{ctrl}",
        "listeners": f"SSL://localhost:{port},CONTROLLER://localhost:{ctrl},EXTERNAL://localhost:{ext}",
        "advertised.listeners": f"SSL://localhost:{port},EXTERNAL://127.0.0.1:{ext}",
        "log.dirs": str(d / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    path = d / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    jopts = [
        "-Xms128m",
        "-Xmx384m",
        f"-Dkafka.logs.dir={d}",
        f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'local' / 'kafka' / 'log4j2.properties'}",
    ]
    cp = f"{LIBS}/*"
    subprocess.run(
        ["java", *jopts, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", env["CLUSTER_ID"]]
        + ["-c", str(path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = (d / "stdout.log").open("wb")
    proc = subprocess.Popen(
        ["java", *jopts, "-cp", cp, "kafka.Kafka", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _up(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"broker did not start: {(d / 'stdout.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _as_compose(service: str, **over: str) -> dict[str, str]:
    """The Kafka/PostgreSQL client settings compose gives ``service``."""
    env = _env(load_compose()["services"][service])
    return {k: v for k, v in env.items() if k in CLIENT_TLS} | over


async def test_kafka_every_listener_tls(compose_kafka: int, tls_dir: Path) -> None:
    env = _as_compose("storage")
    assert env["MD_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    s = Settings.from_env(
        env
        | {
            "MD_KAFKA_BOOTSTRAP": f"localhost:{compose_kafka}",
            "MD_KAFKA_SSL_CAFILE": str(tls_dir / "tls.crt"),
            "MD_TOPIC_PREFIX": f"ctls{os.getpid()}",
        }
    )
    await ensure_topics(s, partitions=1)  # through the broker, which reached its controller
    topic = Topics.from_settings(s).stream("l2")
    producer = make_producer(s)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=b"BTC-USD")
    finally:
        await producer.stop()
    consumer = make_consumer(s, topic)
    await consumer.start()
    try:
        assert (await asyncio.wait_for(consumer.getone(), 30)).value == b"{}"
    finally:
        await consumer.stop()
    plain = make_producer(
        Settings.from_env({"MD_KAFKA_BOOTSTRAP": f"localhost:{compose_kafka}"}),
        request_timeout_ms=3000,
    )
    with pytest.raises((KafkaError, TimeoutError)):
        try:
            await asyncio.wait_for(plain.start(), 10)
        finally:
            await plain.stop()


@pytest.fixture(scope="module")
def compose_pg(tls_dir: Path) -> Iterator[ThrowawayPostgres]:
    if not os.path.exists(f"{PGBIN}/initdb"):
        pytest.fail(f"{PGBIN}/initdb missing: this test needs the PostgreSQL 15 binaries")
    pg = ThrowawayPostgres()
    pg.start()
    subprocess.run(
        [f"{PGBIN}/psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-c"]
        + ["ALTER USER postgres PASSWORD 'compose-pw'"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pg.stop()
    # compose's -c options; its file paths are the entrypoint's copies, here ours
    cmd = load_compose()["services"]["timescaledb"]["command"]
    opts = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-c")
    files = {
        "ssl_cert_file": tls_dir / "tls.crt",
        "ssl_key_file": tls_dir / "tls.key",
        "hba_file": ROOT / "deploy" / "compose" / "pg_hba.conf",
    }
    lines = []
    for k, v in opts.items():
        if k.startswith("ssl") or k == "hba_file":
            src = files.get(k)
            if src is not None:
                dst = Path(pg.dir) / Path(v).name
                shutil.copy(src, dst)
                shutil.chown(dst, "postgres", "postgres")
                os.chmod(dst, 0o600)
                v = str(dst)
            lines.append(f"{k} = '{v}'\n")
    with open(os.path.join(pg.data, "postgresql.conf"), "a") as fh:
        fh.writelines(lines)
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def _dsn(pg: ThrowawayPostgres, tls_dir: Path, password: str, **env: str) -> str:
    base = _as_compose("storage", MD_PG_SSLROOTCERT=str(tls_dir / "tls.crt"))
    dsn = f"postgresql://postgres:{password}@localhost:{pg.port}/postgres"
    return Settings.from_env({**base, **env, "MD_PG_DSN": dsn}).pg_dsn


async def test_postgres_tls_only(compose_pg: ThrowawayPostgres, tls_dir: Path) -> None:
    conn = await asyncpg.connect(_dsn(compose_pg, tls_dir, "compose-pw"), timeout=10)
    try:  # verify-full, as compose's services connect
        assert await conn.fetchval("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # no hostssl, no entry
        await asyncpg.connect(
            _dsn(compose_pg, tls_dir, "compose-pw", MD_PG_SSLMODE="disable", MD_PG_SSLROOTCERT=""),
            timeout=10,
        )
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_dsn(compose_pg, tls_dir, "wrong"), timeout=10)
