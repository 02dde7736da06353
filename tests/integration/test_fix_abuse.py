"""``python -m fix_gateway`` under abuse (issue 12): a garbage flood is disconnected and does not
keep an independent client from logging on and getting its snapshot; connections that never log
on are capped per address; a new authenticated logon takes over a session whose old connection
is still open (no lockout until the old one's heartbeat timeout)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from core.settings import Settings
from fix_gateway.codec import Message, Parser, encode, utc_timestamp
from fix_gateway.testing import gateway, metric
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port
from tests.integration.test_fix_gateway import md_request, raw_logon, recv_msgs

pytestmark = pytest.mark.integration
GARBAGE = b"8=FIX\x01" * 2000 + b"8=FIX.4.4\x019=XY\x0135=0\x0110=000\x01" * 200


def _closed(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_garbage_flood_is_cut_and_another_client_gets_its_snapshot(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    http = free_port()
    env = dict(env_for, MD_FIX_MAX_PENDING_PER_IP="6")
    async with gateway(env, free_port(), http, tmp_path / "store") as gw:
        stop = threading.Event()
        cut = [0]

        def flood() -> None:  # 4 sockets sending garbage, reconnecting when cut
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", gw.fix_port), timeout=2) as s:
                        while not stop.is_set():
                            s.sendall(GARBAGE)
                except OSError:
                    cut[0] += 1

        def client() -> list[Message]:
            with socket.create_connection(("127.0.0.1", gw.fix_port)) as s:
                s.sendall(raw_logon("CLIENT1", 30))
                p = Parser()
                got = recv_msgs(s, p, 1, limit=5)
                s.sendall(
                    encode(
                        "V",
                        [(49, "CLIENT1"), (56, "MDGW"), (34, 2), (52, utc_timestamp())]
                        + md_request("r1", ["BTC-USD"], ["0", "1"]),  # type: ignore[arg-type]
                    )
                )
                return got + recv_msgs(s, p, 1, limit=5)

        floods = [threading.Thread(target=flood) for _ in range(4)]
        for t in floods:
            t.start()
        try:
            await asyncio.sleep(1.0)
            got = await asyncio.to_thread(client)
        finally:
            stop.set()
            for t in floods:
                await asyncio.to_thread(t.join)
        assert [m.msg_type for m in got][:2] == ["A", "W"], got
        assert cut[0] > 0  # the flooding sockets were disconnected (and reconnected)
        assert metric(http, "fix_garbled_total") >= 1

        def pending_cap() -> tuple[list[bool], bool]:
            idle = [socket.create_connection(("127.0.0.1", gw.fix_port)) for _ in range(6)]
            try:
                over = socket.create_connection(("127.0.0.1", gw.fix_port))
                over_closed = _closed(over, 5)
                over.close()
                return [_closed(s, 0.2) for s in idle], over_closed
            finally:
                for s in idle:
                    s.close()

        idle_closed, over_closed = await asyncio.to_thread(pending_cap)
        assert over_closed and not any(idle_closed)  # the 7th waiting one is refused at once
        assert metric(http, "fix_connections_refused_total") >= 1


async def test_new_logon_takes_over_a_session_still_open(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    async with gateway(env_for, free_port(), free_port(), tmp_path / "store") as gw:

        def scenario() -> tuple[list[Message], bool, list[Message]]:
            with socket.create_connection(("127.0.0.1", gw.fix_port)) as old:
                old.sendall(raw_logon("CLIENT1", 300))  # a peer that will go silent
                p_old = Parser()
                assert [m.msg_type for m in recv_msgs(old, p_old, 1)] == ["A"]
                with socket.create_connection(("127.0.0.1", gw.fix_port)) as new:
                    new.sendall(raw_logon("CLIENT1", 30))
                    answer = recv_msgs(new, Parser(), 1)
                    told = recv_msgs(old, p_old, 1)
                    return answer, _closed(old, 5), told

        answer, old_closed, told = await asyncio.to_thread(scenario)
        assert [m.msg_type for m in answer] == ["A"]  # was refused: "already logged on"
        assert [m.msg_type for m in told] == ["5"] and "taken over" in (told[0].get(58) or "")
        assert old_closed
