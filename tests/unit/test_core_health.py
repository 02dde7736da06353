"""core/health.py: liveness apart from readiness, and the endpoints every process serves.

Pure: checks are plain callables, the follower is a real (never started) StreamFollower, the
ops server listens on loopback port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest

from core.health import (
    INFO,
    LIVE,
    LIVENESS,
    READINESS,
    READY,
    Health,
    Result,
    add_follower,
    progressing,
    scope_of,
    summarize,
    tasks_alive,
)
from core.ops_http import start_ops_server


def _health(**state: bool) -> tuple[Health, dict[str, bool]]:
    s = {"loop": True, "kafka": True, "db": True, **state}
    h = Health("svc")
    h.add("loop", lambda: (s["loop"], "turning"), kind=LIVENESS)
    h.add("kafka", lambda: (s["kafka"], "connected"), kind=READINESS)
    h.add("db", lambda: (s["db"], "up"), kind=INFO)
    return h, s


def test_all_pass_is_live_and_ready() -> None:
    h, _ = _health()
    assert h.live() == (
        True,
        {
            "status": "ok",
            "service": "svc",
            "live": True,
            "checks": {"loop": {"ok": True, "kind": "liveness", "detail": "turning"}},
        },
    )
    ok, body = h.ready()
    assert ok and body["status"] == "ok" and body["live"] and body["ready"]
    assert {n: c["kind"] for n, c in body["checks"].items()} == {
        "loop": "liveness",
        "kafka": "readiness",
        "db": "info",
    }
    assert h.report() == h.ready()  # /health is the combined view: the readiness verdict


def test_a_failing_dependency_is_not_ready_but_live() -> None:
    h, _ = _health(kafka=False)
    assert h.live()[0] is True
    ok, body = h.ready()
    assert not ok and body["status"] == "degraded" and body["live"] and not body["ready"]
    assert body["checks"]["kafka"] == {"ok": False, "kind": "readiness", "detail": "connected"}


def test_a_failing_liveness_check_fails_every_endpoint() -> None:
    h, _ = _health(loop=False)
    ok, body = h.live()
    assert not ok and body["status"] == "failing" and not body["live"]
    ok, body = h.ready()
    assert not ok and body["status"] == "failing" and not body["ready"]


def test_info_checks_gate_nothing() -> None:
    h, _ = _health(db=False)
    ok, body = h.ready()
    assert ok and body["status"] == "ok" and body["checks"]["db"]["ok"] is False
    assert h.live()[0]


def test_live_runs_only_liveness_checks() -> None:
    calls: list[str] = []
    h = Health("svc")

    def dep() -> tuple[bool, str]:
        calls.append("dep")
        raise AssertionError("a dependency probe ran for /health/live")

    h.add("dep", dep)

    def loop() -> tuple[bool, None]:
        calls.append("loop")
        return True, None

    h.add("loop", loop, kind=LIVENESS)
    ok, body = h.live()
    assert ok and calls == ["loop"] and list(body["checks"]) == ["loop"] and "ready" not in body
    ok, body = h.ready()  # the readiness probe does run it: a check that raises is a failure
    assert not ok and body["live"] and "check raised" in body["checks"]["dep"]["detail"]


def test_default_kind_is_readiness_and_set_kind_redeclares() -> None:
    h = Health("agg")
    h.add("consumer", lambda: (False, {"last_poll_s": 31}))
    assert h.kinds() == {"consumer": READINESS}
    assert h.live()[0] is True
    h.set_kind("consumer", LIVENESS)
    assert h.kinds() == {"consumer": LIVENESS}
    ok, body = h.live()
    assert not ok and body["checks"]["consumer"]["detail"] == {"last_poll_s": 31}
    with pytest.raises(KeyError):
        h.set_kind("nope", LIVENESS)
    with pytest.raises(ValueError):
        h.add("x", lambda: (True, None), kind="startup")


def test_summarize_with_results_from_elsewhere() -> None:
    rs = [Result("redis", READINESS, True, "up"), Result("database", INFO, False, "refused")]
    ok, body = summarize("gateway_rest", rs, READY)
    assert ok and body["ready"] and body["checks"]["database"]["kind"] == "info"
    ok, body = summarize("gateway_rest", rs, LIVE)
    assert ok and body["checks"] == {}  # no liveness check: answering is being alive
    h = Health("gateway_rest")
    assert h.evaluate(READY, [Result("redis", READINESS, False, "refused")])[0] is False
    with pytest.raises(ValueError):
        summarize("x", rs, "startup")


def test_scope_of_paths() -> None:
    assert [scope_of(p) for p in ("/health", "/health/ready", "/health/live")] == [
        READY,
        READY,
        LIVE,
    ]
    assert scope_of("/healthz") is None and scope_of("/health/") is None


async def test_tasks_alive_names_dead_tasks() -> None:
    async def runs() -> None:
        await asyncio.sleep(60)

    async def crashes() -> None:
        raise RuntimeError("bug")

    async def returns() -> None:
        return None

    alive = asyncio.create_task(runs(), name="alive")
    tasks: list[Any] = [alive, None]
    check = tasks_alive(lambda: tasks)
    assert check() == (True, {"dead": {}})
    tasks += [
        asyncio.create_task(crashes(), name="crashed"),
        asyncio.create_task(returns(), name="returned"),
    ]
    cancelled = asyncio.create_task(runs(), name="cancelled")
    tasks.append(cancelled)
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    ok, detail = check()
    assert not ok and detail == {
        "dead": {"crashed": "RuntimeError: bug", "returned": "returned", "cancelled": "cancelled"}
    }
    alive.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await alive


def test_progressing_fails_once_a_loop_stops_turning() -> None:
    now = [100.0]
    last = [0.0]
    check = progressing(lambda: last[0], 30, clock=lambda: now[0])
    assert check() == (True, {"started": False})  # start-up is not a stuck loop
    last[0] = 95.0
    assert check()[0] is True
    now[0] = 125.5
    ok, detail = check()
    assert not ok and detail == {"last_turn_s": 30.5, "max_s": 30}


async def test_follower_checks_split_kafka_from_dead_loops() -> None:
    from core.follower import StreamFollower
    from core.settings import Settings

    f = StreamFollower(Settings())
    h = Health("gateway_ws")
    add_follower(h, f, name="kafka")
    assert h.kinds() == {"kafka": READINESS, "follower_loops": LIVENESS}
    # starting: not caught up yet -> not ready, but alive
    assert h.live()[0] and not h.ready()[0]
    f.ready.set()
    ok, body = h.ready()
    assert ok and body["checks"]["kafka"]["detail"]["kafka"] == "connected"
    # Kafka lost (watchdog verdict): out of the load balancer, no restart
    f.connected = False
    ok, body = h.ready()
    assert not ok and body["live"] and body["checks"]["kafka"]["detail"]["kafka"] == "lost"
    assert h.live()[0]
    # ... unless the direct feed is proven whole: its books are live without Kafka
    f.backup_paused = True
    ok, body = h.ready()
    assert ok and body["checks"]["kafka"]["detail"]["kafka_backup"].startswith("paused")
    f.backup_paused = False
    f.connected = True

    async def crashes() -> None:
        raise RuntimeError("bug")

    async def runs() -> None:
        await asyncio.sleep(60)

    alive = asyncio.create_task(runs(), name="follower-streams")
    dead = asyncio.create_task(crashes(), name="follower-snapshots")
    f._tasks = [alive, dead]  # noqa: SLF001 - the loops the follower started
    await asyncio.sleep(0)
    ok, body = h.live()
    assert not ok and body["checks"]["follower_loops"]["detail"] == {
        "dead_loops": ["follower-snapshots"]
    }
    alive.cancel()
    with contextlib.suppress(asyncio.CancelledError, RuntimeError):
        await alive
        await dead


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


async def test_ops_server_serves_live_ready_and_combined() -> None:
    h, s = _health()
    server = await start_ops_server(h, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for path in ("/health", "/health/ready", "/health/live"):
            assert (await _get(port, path))[0] == 200
        s["kafka"] = False  # a dependency: not ready, live
        assert [(await _get(port, p))[0] for p in ("/health", "/health/ready", "/health/live")] == [
            503,
            503,
            200,
        ]
        code, body = await _get(port, "/health")
        assert body["status"] == "degraded" and body["checks"]["kafka"]["kind"] == "readiness"
        s["kafka"], s["loop"] = True, False  # the process is broken: restart it
        code, body = await _get(port, "/health/live")
        assert code == 503 and body["status"] == "failing" and list(body["checks"]) == ["loop"]
        assert (await _get(port, "/health/ready"))[0] == 503
    finally:
        server.close()
        await server.wait_closed()


def test_storage_database_down_is_not_ready_but_live() -> None:
    from core.settings import Settings
    from storage.cache_writer import CacheWriter
    from storage.service import build_health

    class Db:
        ok = True

        def health_check(self) -> tuple[bool, object]:
            return self.ok, {"database": "up" if self.ok else "down"}

    cache, db = CacheWriter(Settings()), Db()
    cache.ready.set()
    cache.redis_ok = True
    cache.last_flush_at = cache.last_turn_at = time.monotonic()
    h = build_health(cache, db, lambda: [])
    assert h.kinds() == {
        "cache_writer": READINESS,
        "cache_loop": LIVENESS,
        "db_writer": READINESS,
        "writers": LIVENESS,
    }
    assert h.ready()[0]
    db.ok = False  # PostgreSQL down: history waits in Kafka, the cache writer goes on
    ok, body = h.ready()
    assert not ok and body["live"] and body["checks"]["cache_writer"]["ok"]
    assert h.live()[0]
    cache.last_turn_at -= 31  # the cache writer's loop stopped turning: that one restarts
    ok, body = h.live()
    assert not ok and body["checks"]["cache_loop"]["ok"] is False


async def test_gateway_ws_worker_exits_when_not_live() -> None:
    from gateway_ws.server import exit_when_not_live

    h, s = _health()
    stop = asyncio.Event()
    # live: runs until stopped, never asks to exit
    t = asyncio.create_task(exit_when_not_live(h, stop, grace_s=0.05, interval_s=0.01))
    await asyncio.sleep(0.1)
    stop.set()
    assert await t is False
    # a dependency lost (readiness) is no reason to exit
    s["kafka"] = False
    stop = asyncio.Event()
    t = asyncio.create_task(exit_when_not_live(h, stop, grace_s=0.05, interval_s=0.01))
    await asyncio.sleep(0.1)
    assert not t.done()
    stop.set()
    assert await t is False
    # a liveness check failing for longer than the grace: stop, and say so
    s["loop"] = False
    stop = asyncio.Event()
    assert await asyncio.wait_for(exit_when_not_live(h, stop, 0.05, 0.01), 2) is True
    assert stop.is_set()
