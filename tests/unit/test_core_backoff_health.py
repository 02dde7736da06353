from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from core.backoff import Backoff
from core.health import Health
from core.ops_http import start_ops_server


def test_backoff_grows_exponentially_within_jittered_ceiling() -> None:
    b = Backoff(initial=0.1, maximum=2.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        d = b.next()
        assert 0 < d <= ceilings[-1]
    assert ceilings[:5] == [0.1, 0.2, 0.4, 0.8, 1.6] and ceilings[-1] == 2.0
    b.reset()
    assert b.ceiling() == 0.1


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, maximum=1)


def test_health_reports_failing_and_raising_checks() -> None:
    h = Health("svc")
    h.add("kafka", lambda: (True, "connected"))
    assert h.report()[0] is True
    h.add("db", lambda: (False, "down"))

    def boom() -> tuple[bool, str]:
        raise RuntimeError("x")

    h.add("broken", boom)
    ok, body = h.report()
    assert not ok and body["status"] == "degraded"
    assert (
        body["checks"]["db"] == {"ok": False, "kind": "readiness", "detail": "down"}
        and not body["checks"]["broken"]["ok"]
    )


async def _get(port: int, raw: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    data = await r.read()
    w.close()
    return data


async def test_ops_server_serves_health_and_metrics() -> None:
    h = Health("svc")
    state = {"ok": True}
    h.add("dep", lambda: (state["ok"], "x"))
    server = await start_ops_server(h, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        resp = await _get(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200")
        assert orjson.loads(resp.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
        state["ok"] = False
        assert (await _get(port, b"GET /health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503")
        metrics = await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert metrics.startswith(b"HTTP/1.1 200") and b"python_info" in metrics
        assert (await _get(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _get(port, b"POST /health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _get(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 405")
    finally:
        server.close()
        await server.wait_closed()
