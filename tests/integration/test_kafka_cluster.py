"""`MD_KAFKA_BROKERS=3 deploy/local/kafka.sh start`: a 3-node KRaft cluster on loopback survives
`kill -9` of a partition leader with acks=all, RF 3 and min ISR 2 (issue 11, item 3).

Starts its own cluster (own MD_VAR_DIR, own ports), so it runs beside a live stack. About 30 s
and three JVMs: skipped unless MD_TEST_KAFKA_CLUSTER=1, so `make test` does not change.

    MD_TEST_KAFKA_CLUSTER=1 .venv/bin/python -m pytest -q -s tests/integration/test_kafka_cluster.py
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from core.kafka import ensure_topics, make_consumer, make_producer
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.skipif(
    os.environ.get("MD_TEST_KAFKA_CLUSTER") != "1", reason="set MD_TEST_KAFKA_CLUSTER=1 (3 JVMs)"
)

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
LIBS = Path(os.environ.get("MD_VAR_DIR", ROOT / "var")) / "cache" / "kafka-libs"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _base_port() -> int:
    """A base B with B..B+5 free: brokers B, B+2, B+4, controllers B+1, B+3, B+5."""
    for _ in range(50):
        base = random.randrange(40000, 60000, 2)
        if all(_free(base + k) for k in range(6)):
            return base
    raise RuntimeError("no 6 free consecutive ports")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    if not (LIBS / ".complete").exists():
        pytest.skip(f"Kafka jars missing in {LIBS}: run deploy/local/install.sh")
    var = tmp_path / "var"
    (var / "cache").mkdir(parents=True)
    (var / "cache" / "kafka-libs").symlink_to(LIBS)
    base = _base_port()
    env = {
        **os.environ,
        "MD_VAR_DIR": str(var),
        "MD_KAFKA_BROKERS": "3",
        "MD_KAFKA_PORT": str(base),
        "MD_KAFKA_CONTROLLER_PORT": str(base + 1),
    }
    for k in ("MD_KAFKA_BOOTSTRAP", "MD_KAFKA_REPLICATION_FACTOR", "MD_KAFKA_MIN_ISR"):
        env.pop(k, None)
    t0 = time.monotonic()
    try:
        subprocess.run([str(KAFKA_SH), "start"], env=env, check=True, timeout=150)
        print(f"cluster up in {time.monotonic() - t0:.1f}s")
        # what common.sh exports to the services in this mode
        out = subprocess.run(
            ["bash", "-c", f"source {ROOT}/deploy/local/common.sh; env | grep ^MD_KAFKA_ | sort"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(out, end="")
        exported = dict(line.split("=", 1) for line in out.split())
        assert exported["MD_KAFKA_BOOTSTRAP"] == ",".join(
            f"127.0.0.1:{base + 2 * i}" for i in range(3)
        )
        assert exported["MD_KAFKA_REPLICATION_FACTOR"] == "3"
        assert exported["MD_KAFKA_MIN_ISR"] == "2"
        yield exported, var
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, timeout=120)
        assert not list((var / "run").glob("kafka-*.pid"))
        shutil.rmtree(var, ignore_errors=True)


async def _produce(s: Settings, topic: str, start: int, n: int) -> None:
    p = make_producer(s, request_timeout_ms=20000)
    await p.start()
    try:
        for i in range(start, start + n):
            await p.send_and_wait(topic, f"r{i}".encode(), partition=0)
    finally:
        await p.stop()


async def _consume_all(s: Settings, topic: str, n: int) -> list[bytes]:
    c = make_consumer(s)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=1000)).values():
                got += [r.value for r in recs if r.value is not None]
        return got
    finally:
        await c.stop()


async def _partition0(s: Settings, topic: str) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        (d,) = await admin.describe_topics([topic])
        return next(p for p in d["partitions"] if p["partition"] == 0)
    finally:
        await admin.close()


async def test_three_brokers_survive_the_loss_of_a_leader(
    cluster: tuple[dict[str, str], Path],
) -> None:
    exported, var = cluster
    s = Settings.from_env({**exported, "MD_TOPIC_PREFIX": "k3"})
    created = await ensure_topics(s)
    topic = Topics.from_settings(s).input
    assert topic in created
    p0 = await _partition0(s, topic)
    print(f"{topic} p0: leader {p0['leader']} replicas {p0['replicas']} isr {p0['isr']}")
    assert sorted(p0["replicas"]) == [1, 2, 3] and sorted(p0["isr"]) == [1, 2, 3]

    await _produce(s, topic, 0, 50)
    assert len(await _consume_all(s, topic, 50)) == 50
    print("produced 50 (acks=all), consumed 50")

    leader = p0["leader"]
    pid = int((var / "run" / f"kafka-{leader}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    print(f"kill -9 node {leader} (pid {pid}), the leader of {topic}-0")

    await _produce(s, topic, 50, 50)
    print(f"produced 50 more (acks=all) in {time.monotonic() - t0:.1f}s after the kill")
    after = await _partition0(s, topic)
    print(f"{topic} p0: leader {after['leader']} replicas {after['replicas']} isr {after['isr']}")
    assert after["leader"] != leader and leader not in after["isr"] and len(after["isr"]) == 2
    got = await _consume_all(s, topic, 100)
    assert got == [f"r{i}".encode() for i in range(100)]
    print("consumed all 100 in order, none lost")
