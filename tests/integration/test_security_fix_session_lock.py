"""Two ``python -m fix_gateway`` processes sharing one Redis never serve the same FIX session at
once (issue 12: "two pods can hold the same session"): a second logon on the other process is
refused while the first holds the session's lease; the holder then hands the session over (its
connection gets a Logout) and the retry succeeds. The lease's own rules (fencing values,
renewal, takeover requests, loss) are checked against the real Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.settings import Settings
from fix_gateway.codec import Message, Parser
from fix_gateway.session_lock import SessionLock
from fix_gateway.testing import gateway
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port
from tests.integration.test_fix_gateway import raw_logon, recv_msgs

pytestmark = pytest.mark.integration


def _logon(port: int) -> tuple[socket.socket, list[Message]]:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(raw_logon("CLIENT1", 30))
    return s, recv_msgs(s, Parser(), 1)


def _retry_logon(port: int, within: float = 10.0) -> list[Message]:
    deadline = time.monotonic() + within
    while True:
        s, answer = _logon(port)
        s.close()
        if (answer and answer[0].msg_type == "A") or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


async def test_second_process_refuses_a_session_held_by_the_first(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    """A holds CLIENT1 on a connection whose peer went silent; a logon at B is refused, and A
    hands the session over at its next renewal (newest logon wins, as within one process): the
    silent connection gets a Logout, B's retry gets in. Once B's connection ends, A can have it
    again."""
    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    env = dict(env_for, MD_FIX_SESSION_LOCK="redis", MD_FIX_SESSION_LEASE_S="3")
    async with (
        gateway(env, free_port(), free_port(), tmp_path / "a") as a,
        gateway(env, free_port(), free_port(), tmp_path / "b") as b,
    ):

        def scenario() -> dict[str, list[Message]]:
            out: dict[str, list[Message]] = {}
            held, out["first"] = _logon(a.fix_port)
            with held:
                refused_sock, out["refused"] = _logon(b.fix_port)
                refused_sock.close()
                out["told"] = recv_msgs(held, Parser(), 1, limit=8)  # the handover's Logout
                out["at_b"] = _retry_logon(b.fix_port)
            out["back_at_a"] = _retry_logon(a.fix_port)
            return out

        got = await asyncio.to_thread(scenario)
    assert [m.msg_type for m in got["first"]] == ["A"]
    assert [m.msg_type for m in got["refused"]] == ["5"]  # Logout, no session
    assert "logged on at another gateway" in (got["refused"][0].get(58) or "")
    assert [m.msg_type for m in got["told"]] == ["5"]
    assert "taken over by a logon at another gateway" in (got["told"][0].get(58) or "")
    assert [m.msg_type for m in got["at_b"]] == ["A"]
    assert [m.msg_type for m in got["back_at_a"]] == ["A"]


async def test_lease_fencing_renewal_and_loss(settings: Settings) -> None:
    url, prefix = settings.redis_url, settings.redis_prefix
    lost: list[str] = []
    one = SessionLock(
        url, prefix, lease_s=5, owner="one", on_lost=lambda sid, why: lost.append(sid)
    )
    two = SessionLock(url, prefix, lease_s=5, owner="two")
    r = aioredis.Redis.from_url(url)
    key = f"{prefix}:fix:lock:S1"
    try:
        assert one.acquire("S1") is None and one.acquire("S1") is None  # ours: renewed
        fence1 = one.held["S1"]
        assert (two.acquire("S1") or "").startswith("session is logged on at another gateway")
        assert await one.renew() == ([], ["S1"]) and 0 < await r.pttl(key) <= 5000  # asked for
        assert await one.renew() == ([], [])  # the request was taken (GETDEL)
        one.release("S1")
        assert two.acquire("S1") is None and two.held["S1"] > fence1  # a new fence
        assert one.acquire("S1") is not None
        # "one" holds again after "two" let go, then its lease is taken behind its back (as
        # after an expiry): renewal finds out and the session is ended, and one cannot delete
        # the new holder's lease
        two.release("S1")
        assert one.acquire("S1") is None
        await r.set(key, "three|999", px=5000)
        assert await one.renew() == (["S1"], [])
        one._lost("S1")
        assert lost == ["S1"] and "S1" not in one.held
        one.release("S1")
        assert await r.get(key) == b"three|999"
    finally:
        await r.delete(key, f"{prefix}:fix:fence:S1", f"{prefix}:fix:takeover:S1")
        await r.aclose()
        for lk in (one, two):
            lk.close()


async def test_unreachable_redis_refuses_logons(settings: Settings) -> None:
    port = free_port()  # nothing listens there
    lock = SessionLock(f"redis://127.0.0.1:{port}/0", settings.redis_prefix, owner="x")
    try:
        assert lock.acquire("S1") == "session lock unavailable, retry later"
        assert lock.held == {}
    finally:
        lock.close()
