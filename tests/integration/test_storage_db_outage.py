"""The database goes down mid-stream and comes back: nothing lost, nothing written twice.

Runs its own throwaway PostgreSQL cluster (initdb under /tmp on a free port, as the `postgres`
OS user) so stopping it never touches the shared server on 15432.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration
PGBIN = "/usr/lib/postgresql/15/bin"
SYM = "OUT-USD"


def _as_postgres(*cmd: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=60
    )


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="md-storage-pg-", dir="/tmp")
        self.data = os.path.join(self.dir, "data")
        shutil.chown(self.dir, "postgres", "postgres")
        _as_postgres(
            f"{PGBIN}/initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB"
        _as_postgres(
            f"{PGBIN}/pg_ctl",
            "-D",
            self.data,
            "-o",
            opts,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        _as_postgres(f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[ThrowawayPostgres]:
    if not os.path.exists(f"{PGBIN}/initdb"):
        pytest.fail(f"{PGBIN}/initdb missing: the DB-outage test needs the PostgreSQL 15 binaries")
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    pg.destroy()


async def _trades(p: AIOKafkaProducer, t: Topics, lo: int, hi: int) -> None:
    await T.produce_stream(
        p, t, "trades", [(SYM, T.trade(SYM, i, f"o{i}", "1.5", "2")) for i in range(lo, hi)]
    )


async def test_database_down_then_up_loses_nothing(
    settings: Settings, own_pg: ThrowawayPostgres
) -> None:
    await migrate(own_pg.dsn)
    s = dataclasses.replace(settings, pg_dsn=own_pg.dsn)
    t = Topics.from_settings(s)
    w = DbWriter(s, DbWriterConfig(group_id=f"{s.topic_prefix}.outage", batch_records=200))
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    p = make_producer(s)
    await p.start()
    try:
        await _trades(p, t, 1, 501)
        await eventually(lambda: w.counters.trades_inserted == 500, 30)
        assert w.health_check()[0] is True

        own_pg.stop()
        await _trades(p, t, 501, 1501)
        await eventually(lambda: w.counters.db_retries >= 3, 30)
        ok, detail = w.health_check()
        assert ok is False and detail["database"] == "down"  # type: ignore[index]
        assert w.counters.trades_inserted == 500

        own_pg.start()
        await eventually(lambda: w.counters.trades_inserted == 1500, 30)
        await _trades(p, t, 1501, 1601)
        await eventually(lambda: w.counters.trades_inserted == 1600 and w.queue.empty(), 30)
    finally:
        await p.stop()
        stop.set()
        await asyncio.wait_for(task, 20)
    assert w.counters.rows_rejected == 0
    c = await asyncpg.connect(own_pg.dsn)
    try:
        n, distinct = await c.fetchrow(
            "SELECT count(*), count(DISTINCT trade_id) FROM trades WHERE symbol = $1", SYM
        )
        assert (n, distinct) == (1600, 1600)
    finally:
        await c.close()
