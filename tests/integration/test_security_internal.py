"""Internal traffic settings reach the real servers (issue 12 "Secrets and internal traffic"):
Redis AUTH (deploy/local/redis.sh + MD_REDIS_PASSWORD), PostgreSQL sslmode (MD_PG_SSLMODE)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from core.settings import Settings
from tests.conftest import BASE, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REDIS_SH = ROOT / "deploy" / "local" / "redis.sh"
PASSWORD = "s3cret-redis-pw with spaces/and:colons"


@pytest.fixture
def redis_with_auth(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "MD_VAR_DIR": str(tmp_path), "MD_REDIS_PORT": str(port)}
    env["MD_REDIS_PASSWORD"] = PASSWORD
    subprocess.run(["bash", str(REDIS_SH), "start"], env=env, check=True, timeout=60)
    try:
        yield port
    finally:
        subprocess.run(["bash", str(REDIS_SH), "stop"], env=env, check=True, timeout=60)
    conf = tmp_path / "run" / "redis-auth.conf"
    assert conf.stat().st_mode & 0o077 == 0  # the password file is private to its owner


async def test_redis_requires_auth_and_the_services_send_it(redis_with_auth: int) -> None:
    url = f"redis://127.0.0.1:{redis_with_auth}/0"
    anonymous = aioredis.Redis.from_url(Settings.from_env({"MD_REDIS_URL": url}).redis_url)
    with pytest.raises((AuthenticationError, ResponseError)):
        await anonymous.ping()
    await anonymous.aclose()
    s = Settings.from_env({"MD_REDIS_URL": url, "MD_REDIS_PASSWORD": PASSWORD})
    assert PASSWORD not in repr(s)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        assert await r.ping()
    finally:
        await r.aclose()


async def test_pg_sslmode_is_applied_to_every_connection() -> None:
    """The local server has no TLS: sslmode=require must then refuse to connect (proof that the
    setting reaches asyncpg), disable connects."""
    base = {"MD_PG_DSN": BASE.pg_dsn}
    strict = Settings.from_env({**base, "MD_PG_SSLMODE": "require"})
    assert "sslmode=require" in strict.pg_dsn
    with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError)):
        await asyncpg.connect(strict.pg_dsn, timeout=5)
    plain = Settings.from_env({**base, "MD_PG_SSLMODE": "disable"})
    conn = await asyncpg.connect(plain.pg_dsn, timeout=5)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
