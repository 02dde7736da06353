"""Shared fixtures.

Unit tests (tests/unit) touch no server. Integration tests (tests/integration) use the real Kafka,
PostgreSQL and Redis started by ``deploy/local/infra.sh up`` (``make test`` does it) and isolate
themselves from each other and from a running ``make run`` stack:

- ``settings``: a unique Kafka topic prefix and Redis key prefix per test, topics created;
- ``redis_settings``: only a unique Redis key prefix (no topics), for cache readers;
- ``pg_dsn``: a fresh database per test module, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from core.settings import Settings
from testkit.ports import free_port as free_port  # the tests import it from here

BASE = Settings.from_env()


def _port_open(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _pg_hostport(dsn: str) -> str:
    rest = dsn.split("@", 1)[1]
    return rest.split("/", 1)[0]


def _redis_hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].split("@")[-1]


@pytest.fixture(scope="session", autouse=True)
def _infra_check(request: pytest.FixtureRequest) -> None:
    """Fail integration tests loudly (not skip) when the real servers are not up."""
    wants = any("integration" in str(item.fspath) for item in request.session.items)
    if not wants:
        return
    missing = [
        name
        for name, hp in (
            ("Kafka", BASE.kafka_bootstrap.split(",")[0]),
            ("PostgreSQL", _pg_hostport(BASE.pg_dsn)),
            ("Redis", _redis_hostport(BASE.redis_url)),
        )
        if not _port_open(hp)
    ]
    if missing:
        pytest.exit(
            f"integration tests need {', '.join(missing)}: run `make infra` (or `make test`)", 2
        )


def _server_versions() -> dict[str, str]:
    """Ask each real server who it is, so the run's output proves what the tests talked to."""
    import asyncpg
    import redis
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    # what a server that is down or refusing us raises; anything else is a bug worth seeing
    unreachable = (OSError, TimeoutError, KafkaError, asyncpg.PostgresError, redis.RedisError)

    async def _kafka() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=BASE.kafka_bootstrap)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return f"cluster {cluster['cluster_id']}, {len(cluster['brokers'])} broker(s)"
        finally:
            await admin.close()

    async def _pg() -> str:
        conn = await asyncpg.connect(BASE.pg_dsn)
        try:
            pg = str(await conn.fetchval("SELECT version()")).split(" on ")[0]
            ts = await conn.fetchval(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
            )
            preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
            if ts is None:
                return f"{pg}, no TimescaleDB"
            return f"{pg}, TimescaleDB {ts}" + (
                "" if "timescaledb" in preload else " (not preloaded)"
            )
        finally:
            await conn.close()

    out: dict[str, str] = {}
    for name, fn in (("Kafka", _kafka), ("PostgreSQL", _pg)):
        try:
            out[name] = asyncio.run(fn())
        except unreachable as exc:
            out[name] = f"unreachable ({exc!r})"
    try:
        info = redis.Redis.from_url(BASE.redis_url).info("server")
        out["Redis"] = f"Redis {info['redis_version']}"
    except unreachable as exc:
        out["Redis"] = f"unreachable ({exc!r})"
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    ran = sum(1 for r in reports if r.when == "call" and "tests/integration/" in r.nodeid)
    if not ran:
        return
    tr = terminalreporter
    tr.section("real servers used by the integration tests")
    tr.write_line(f"{ran} integration tests ran against:")
    hosts = {
        "Kafka": BASE.kafka_bootstrap,
        "PostgreSQL": _pg_hostport(BASE.pg_dsn),
        "Redis": _redis_hostport(BASE.redis_url),
    }
    for name, version in _server_versions().items():
        tr.write_line(f"  {name:<10} {hosts[name]:<18} {version}")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def settings(request: pytest.FixtureRequest) -> AsyncIterator[Settings]:
    """Settings isolated to this test: own topics (created), own Redis key prefix. Stream topics
    get 1 partition, as ``make up`` makes them, unless the test is marked ``stream_partitions(n)``
    (database writers sharing a consumer group, as in docker-compose and k8s)."""
    from core.kafka import ensure_topics

    tag = unique()
    s = dataclasses.replace(BASE, topic_prefix=f"test.{tag}", redis_prefix=f"test:{tag}")
    marker = request.node.get_closest_marker("stream_partitions")
    await ensure_topics(s, partitions=3, stream_partitions=marker.args[0] if marker else None)
    yield s
    await _delete_test_data(s)


@pytest.fixture
def redis_settings() -> Settings:
    """Only a unique Redis prefix, for tests that read the cache and need no Kafka topics."""
    return dataclasses.replace(BASE, redis_prefix=f"test:{unique()}")


async def _delete_test_data(s: Settings) -> None:
    """Drop the test's topics and Redis keys: a full suite creates thousands of partitions,
    and every one holds files open in the broker."""
    import redis.asyncio as aioredis
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(s.topic_prefix + ".")]
        if names:
            await admin.delete_topics(names)
    except (KafkaError, OSError, TimeoutError) as exc:  # cleanup never fails the test
        print(f"[cleanup] could not delete topics of {s.topic_prefix}: {exc!r}")
    finally:
        await admin.close()
    r = aioredis.from_url(s.redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{s.redis_prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await r.delete(*keys[i : i + 500])
    except (RedisError, OSError) as exc:
        print(f"[cleanup] could not delete Redis keys of {s.redis_prefix}: {exc!r}")
    finally:
        await r.aclose()


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database for this module on the real server."""
    import asyncpg

    name = unique("test_")
    admin_dsn = BASE.pg_dsn.rsplit("/", 1)[0] + "/postgres"

    async def _exec(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(_exec(f'CREATE DATABASE "{name}"'))
    yield BASE.pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def env_for(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess service bound to this test's isolated settings."""
    env = dict(os.environ)
    env.update(
        MD_TOPIC_PREFIX=settings.topic_prefix,
        MD_REDIS_PREFIX=settings.redis_prefix,
        MD_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        MD_REDIS_URL=settings.redis_url,
        MD_PG_DSN=settings.pg_dsn,
    )
    return env
