"""PostgreSQL over TLS with MD_PG_SSLMODE=verify-full for real (issue 12): a throwaway cluster that
accepts only TLS; the platform's DSN from settings connects encrypted when the CA and the host
name match, and refuses a server whose certificate another CA signed or whose name differs."""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from core.settings import Settings
from tests.helpers import self_signed_cert
from tests.integration.test_storage_db_outage import PGBIN, ThrowawayPostgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThrowawayPostgres, Path]]:
    if not os.path.exists(f"{PGBIN}/initdb"):
        pytest.fail(f"{PGBIN}/initdb missing: this test needs the PostgreSQL 15 binaries")
    pg = ThrowawayPostgres()
    cert, key = self_signed_cert(tmp_path_factory.mktemp("pgtls"))
    for src, name in ((cert, "server.crt"), (key, "server.key")):
        dst = os.path.join(pg.data, name)
        shutil.copy(src, dst)
        shutil.chown(dst, "postgres", "postgres")
        os.chmod(dst, 0o600)
    with open(os.path.join(pg.data, "postgresql.conf"), "a") as fh:
        fh.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    with open(os.path.join(pg.data, "pg_hba.conf"), "w") as fh:
        fh.write("local all all trust\nhostnossl all all 0.0.0.0/0 reject\n")
        fh.write("hostssl all all 127.0.0.1/32 trust\n")
    pg.start()
    try:
        yield pg, cert
    finally:
        pg.destroy()


def _dsn(pg: ThrowawayPostgres, host: str, **env: str) -> str:
    return Settings.from_env(
        {"MD_PG_DSN": f"postgresql://postgres@{host}:{pg.port}/postgres", **env}
    ).pg_dsn


async def test_verify_full_connects_encrypted(tls_pg: tuple[ThrowawayPostgres, Path]) -> None:
    pg, cert = tls_pg
    dsn = _dsn(pg, "localhost", MD_PG_SSLMODE="verify-full", MD_PG_SSLROOTCERT=str(cert))
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        assert await conn.fetchval("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    finally:
        await conn.close()


async def test_verify_full_refuses_another_ca(
    tls_pg: tuple[ThrowawayPostgres, Path], tmp_path: Path
) -> None:
    pg, _ = tls_pg
    other, _ = self_signed_cert(tmp_path)
    dsn = _dsn(pg, "localhost", MD_PG_SSLMODE="verify-full", MD_PG_SSLROOTCERT=str(other))
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(dsn, timeout=10)


async def test_verify_full_refuses_a_wrong_host_name(
    tls_pg: tuple[ThrowawayPostgres, Path],
) -> None:
    pg, cert = tls_pg
    dsn = _dsn(pg, "127.0.0.1", MD_PG_SSLMODE="verify-full", MD_PG_SSLROOTCERT=str(cert))
    with pytest.raises(ssl.SSLCertVerificationError):  # the certificate names localhost only
        await asyncpg.connect(dsn, timeout=10)


async def test_without_tls_the_server_refuses(tls_pg: tuple[ThrowawayPostgres, Path]) -> None:
    pg, _ = tls_pg
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(_dsn(pg, "localhost", MD_PG_SSLMODE="disable"), timeout=10)
