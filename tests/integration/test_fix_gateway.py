"""``python -m fix_gateway`` on the real Kafka, driven by the Python initiator and raw sockets.

The independent-engine proof (QuickFIX/J) is ``test_fix_quickfixj.py``; this file covers what is
easier to force from our own client: heartbeat timeout, garbled bytes on the wire, restart with
persisted sequence numbers, and the book rebuilt from FIX against the platform's book.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from core.book import L2Book
from core.settings import Settings
from fix_gateway.client import FixClient
from fix_gateway.codec import Message, Parser, encode, utc_timestamp
from fix_gateway.store import MemoryStore
from fix_gateway.testing import gateway, metric
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port
from tests.helpers import eventually, self_signed_cert

pytestmark = pytest.mark.integration
ENTRY = frozenset({279, 269, 55, 270, 271, 83})


def md_request(
    req: str, symbols: list[str], types: list[str], depth: int = 0
) -> list[tuple[int, str | int]]:
    f: list[tuple[int, str | int]] = [
        (262, req),
        (263, "1"),
        (264, depth),
        (265, "1"),
        (267, len(types)),
    ]
    f += [(269, t) for t in types]
    f.append((146, len(symbols)))
    f += [(55, s) for s in symbols]
    return f


class FixBook:
    """A FIX client's view: W loads, X applies; RptSeq per symbol."""

    def __init__(self) -> None:
        self.books: dict[str, L2Book] = {}
        self.seq: dict[str, int] = {}
        self.trades: list[tuple[str, str, str, int]] = []

    def apply(self, m: Message) -> None:
        if m.msg_type == "W":
            sym = m.get(55) or ""
            b = self.books.setdefault(sym, L2Book())
            b.clear()
            for e in m.group(268, frozenset({269, 270, 271})):
                if e[269] in ("0", "1"):
                    b.set("buy" if e[269] == "0" else "sell", e[270], e[271])
            self.seq[sym] = int(m.get(83) or 0)
        elif m.msg_type == "X":
            for e in m.group(268, ENTRY):
                sym = e[55]
                if e[269] == "2":
                    self.trades.append((sym, e[270], e[271], int(e[83])))
                    continue
                assert int(e[83]) == self.seq[sym] + 1 or int(e[83]) == self.seq[sym], "RptSeq gap"
                self.books[sym].set(
                    "buy" if e[269] == "0" else "sell", e[270], "0" if e[279] == "2" else e[271]
                )
                self.seq[sym] = int(e[83])


def raw_logon(
    sender: str, heartbeat: int, reset: bool = True, password: str | None = None
) -> bytes:
    """A raw Logon (35=A, seq 1) to MDGW, for the tests that drive the socket themselves."""
    fields: list[tuple[int, str | int]] = [
        (49, sender),
        (56, "MDGW"),
        (34, 1),
        (52, utc_timestamp()),
        (98, 0),
        (108, heartbeat),
    ]
    if reset:
        fields.append((141, "Y"))
    if password is not None:
        fields.append((554, password))
    return encode("A", fields)


async def test_subscribe_and_rebuild_book_equal_to_platform(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    btc, eth = Platform("BTC-USD"), Platform("ETH-USD")
    async with Publisher(settings) as pub:
        await pub.seed(btc)
        await pub.seed(eth)
        http = free_port()
        async with gateway(env_for, free_port(), http, tmp_path / "store") as gw:
            view = FixBook()
            c = await FixClient.connect("127.0.0.1", gw.fix_port, on_app=None)
            await c.logged_on()
            c.send("x", [(320, "sl1"), (559, 4)])
            y = await c.next_app()
            assert y.msg_type == "y" and y.get(560) == "0"
            assert {r[55] for r in y.group(146, frozenset({55, 107, 15, 562, 58}))} == {
                "BTC-USD",
                "ETH-USD",
            }
            c.send("V", md_request("md1", ["BTC/USD", "eth-usd"], ["0", "1", "2"]))
            for _ in range(2):
                view.apply(await c.next_app())
            assert (
                view.books["BTC-USD"].snapshot() == btc.book.snapshot()
                and view.seq["BTC-USD"] == btc.seq
            )
            rng = random.Random(11)
            for i in range(60):
                p = btc if i % 3 else eth
                side = rng.choice(["buy", "sell"])
                px = f"{(95 if side == 'buy' else 101) + rng.randint(0, 8)}.00"
                await pub.l2(p, [[side, px, rng.choice(["0", "0.5", "3"])]])
                if i % 10 == 0:
                    await pub.trade(btc, "100.00", "0.25")

            def drain() -> bool:
                while not c.app.empty():
                    view.apply(c.app.get_nowait())
                return (
                    view.seq.get("BTC-USD") == btc.seq
                    and view.seq.get("ETH-USD") == eth.seq
                    and len(view.trades) == 6
                )

            await eventually(drain, 10, interval=0.02)
            assert view.books["BTC-USD"].snapshot() == btc.book.snapshot()
            assert view.books["ETH-USD"].snapshot() == eth.book.snapshot()
            assert [t[3] for t in view.trades] == [1, 2, 3, 4, 5, 6]
            # bad requests get MarketDataRequestReject(Y), the session stays up
            c.send("V", md_request("md2", ["NOPE-USD"], ["0"]))
            c.send("V", md_request("md1", ["BTC-USD"], ["0"]))
            rejects: list[tuple[str | None, str | None]] = []
            while len(rejects) < 2:
                m = await c.next_app()
                if m.msg_type == "Y":
                    rejects.append((m.get(262), m.get(281)))
            assert rejects == [("md2", "0"), ("md1", "1")]
            assert metric(http, "fix_md_rejects_total") == 2
            assert metric(http, "fix_messages_out_total") > 20
            await c.logout()
            assert c.session.closed and c.close_reason and "logout" in c.close_reason


def recv_msgs(s: socket.socket, parser: Parser, want: int, limit: float = 8.0) -> list[Message]:
    s.settimeout(limit)
    out: list[Message] = []
    while len(out) < want:
        data = s.recv(65536)
        if not data:
            break
        parser.receive_data(data)
        out += [m for m in parser.events_received() if isinstance(m, Message)]
    return out


async def test_heartbeat_timeout_garbled_and_unknown_session(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    http = free_port()
    async with gateway(env_for, free_port(), http, tmp_path / "store") as gw:

        def scenario() -> tuple[list[Message], bool, bytes]:
            with socket.create_connection(("127.0.0.1", gw.fix_port)) as s:
                s.sendall(raw_logon("CLIENT1", 1))
                p = Parser()
                got = recv_msgs(s, p, 1)
                s.sendall(b"8=FIX.4.4\x019=5\x0135=0\x0110=000\x01")  # garbled: dropped, counted
                got += recv_msgs(
                    s, p, 10, limit=8
                )  # heartbeats, a TestRequest, then the disconnect
                s.settimeout(1)
                try:
                    closed = s.recv(1) == b""
                except OSError:
                    closed = True
            with socket.create_connection(("127.0.0.1", gw.fix_port)) as s2:
                s2.sendall(raw_logon("STRANGER", 30, reset=False))
                s2.settimeout(5)
                unknown = s2.recv(100)
            return got, closed, unknown

        got, closed, unknown = await asyncio.to_thread(scenario)
        types = [m.msg_type for m in got]
        assert types[0] == "A" and "1" in types, types
        assert closed
        assert unknown == b""  # unknown CompID: disconnected without an answer
        assert metric(http, "fix_garbled_total") == 1
        assert metric(http, 'fix_session_events_total{event="heartbeat_timeouts"}') == 1


async def test_restart_continues_sequence_numbers_and_resends(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    store_dir, client_store = tmp_path / "store", MemoryStore()
    fix_port = free_port()
    async with gateway(env_for, fix_port, free_port(), store_dir):
        c = await FixClient.connect("127.0.0.1", fix_port, store=client_store, reset=True)
        await c.logged_on()
        c.send("x", [(320, "before"), (559, 4)])
        y = await c.next_app()
        assert y.get(34) == "2"
        await c.logout()
    assert client_store.next_target_seq == 4  # Logon 1, SecurityList 2, Logout 3
    async with gateway(env_for, fix_port, free_port(), store_dir):
        c = await FixClient.connect("127.0.0.1", fix_port, store=client_store, reset=False)
        c.keep_raw = True
        await c.logged_on()
        assert client_store.next_target_seq == 5  # the gateway's Logon continued at 4
        c.send("2", [(7, 1), (16, 0)])  # ask for everything again

        def parsed() -> list[Message]:
            p = Parser()
            p.receive_data(b"".join(c.raw_in))
            return [m for m in p.events_received() if isinstance(m, Message)]

        await eventually(lambda: len(parsed()) >= 4, 10, interval=0.02)
        msgs = parsed()
        resent = [(m.msg_type, m.get(34), m.get(43)) for m in msgs[1:]]
        assert resent[:3] == [("4", "1", "Y"), ("y", "2", "Y"), ("4", "3", "Y")]
        assert msgs[2].get(320) == "before" and msgs[2].get(122)
        await c.logout()


async def test_tls_and_configured_password_session(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    import ssl

    async with Publisher(settings) as pub:
        await pub.seed(Platform("BTC-USD"))
    cert, key = self_signed_cert(tmp_path)
    sessions = tmp_path / "sessions.toml"
    sessions.write_text('[[session]]\nsender_comp_id = "FUND7"\npassword = "s3cret"\n')
    env = {
        **env_for,
        "MD_FIX_TLS_CERT": str(cert),
        "MD_FIX_TLS_KEY": str(key),
        "MD_FIX_SESSIONS_FILE": str(sessions),
    }
    async with gateway(env, free_port(), free_port(), tmp_path / "store") as gw:

        def logon(password: str, use_tls: bool = True) -> list[Message]:
            ctx = ssl.create_default_context(cafile=str(cert))
            with socket.create_connection(("127.0.0.1", gw.fix_port)) as raw_sock:
                s = ctx.wrap_socket(raw_sock, server_hostname="localhost") if use_tls else raw_sock
                s.sendall(raw_logon("FUND7", 30, password=password))
                try:
                    return recv_msgs(s, Parser(), 1, limit=3)
                except OSError:
                    return []

        ok = await asyncio.to_thread(logon, "s3cret")
        assert [m.msg_type for m in ok] == ["A"]
        bad = await asyncio.to_thread(logon, "wrong")
        assert [m.msg_type for m in bad] == ["5"] and "Password" in (bad[0].get(58) or "")
        plain_tcp = await asyncio.to_thread(logon, "s3cret", False)
        assert plain_tcp == []  # TLS only: a plaintext Logon gets nothing


async def test_new_epoch_resnapshots_and_slow_consumer_is_cut(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    btc = Platform("BTC-USD")
    async with Publisher(settings) as pub:
        await pub.seed(btc)
        http = free_port()
        env = {**env_for, "MD_FIX_MAX_BUFFER": "20000"}
        async with gateway(env, free_port(), http, tmp_path / "store") as gw:
            c = await FixClient.connect("127.0.0.1", gw.fix_port)
            await c.logged_on()
            c.send("V", md_request("md1", ["BTC-USD"], ["0", "1"]))
            view = FixBook()
            view.apply(await c.next_app())
            # the aggregator lost its state: a new epoch, seq restarting, a snapshot of the new epoch
            fresh = Platform("BTC-USD", epoch=2)
            fresh.book.load([("90.00", "1")], [("91.00", "1")])
            await pub.prod.send_and_wait(pub.t.snapshot, fresh.snapshot(), key=b"l2:BTC-USD")
            await pub.l2(fresh, [["buy", "89.00", "2"]])
            w = await c.next_app()
            while w.msg_type != "W":
                w = await c.next_app()
            view.apply(w)

            def caught_up() -> bool:
                if not c.app.empty():
                    view.apply(c.app.get_nowait())
                return view.seq["BTC-USD"] == fresh.seq

            await eventually(caught_up, 10, interval=0.02)
            assert view.books["BTC-USD"].snapshot() == fresh.book.snapshot()

            # a client that stops reading: its buffer passes MD_FIX_MAX_BUFFER and it is cut, counted.
            # Full refreshes of a 200-level book (~5 KiB each) fill the kernel buffers quickly.
            deep = [["buy", f"{80 - i * 0.25:.2f}", "1"] for i in range(100)] + [
                ["sell", f"{92 + i * 0.25:.2f}", "1"] for i in range(100)
            ]
            await pub.l2(fresh, deep)

            def silent_client() -> socket.socket:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", gw.fix_port))
                s.sendall(raw_logon("CLIENT1", 30))
                return s

            await c.logout()
            s = await asyncio.to_thread(silent_client)
            try:
                await asyncio.sleep(0.5)
                req = [f for f in md_request("slow", ["BTC-USD"], ["0", "1"]) if f[0] != 265] + [
                    (265, "0")
                ]
                s.sendall(
                    encode(
                        "V", [(49, "CLIENT1"), (56, "MDGW"), (34, 2), (52, utc_timestamp()), *req]
                    )
                )
                for _batch in range(20):
                    for i in range(200):
                        await pub.prod.send(
                            pub.t.stream("l2"),
                            fresh.update([["sell", "200.00", str(1 + i % 7)]]),
                            key=b"BTC-USD",
                        )
                    await pub.prod.flush()
                    await asyncio.sleep(0.2)
                    if metric(http, "fix_slow_consumer_disconnects_total") >= 1:
                        break
                assert metric(http, "fix_slow_consumer_disconnects_total") == 1
            finally:
                s.close()


async def test_a_symbol_nobody_read_is_served_exactly_when_first_subscribed(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    """With no session subscribed the gateway keeps BTC-USD cold (bytes only, core/follower.py):
    the first MarketDataRequest must still get the exact book at the exact RptSeq, and the
    updates after it must apply on top (issue 10)."""
    btc = Platform("BTC-USD")
    async with Publisher(settings) as pub:
        await pub.seed(btc)
        http = free_port()
        async with gateway(env_for, free_port(), http, tmp_path / "store") as gw:
            rng = random.Random(5)

            async def updates(n: int) -> None:
                for _ in range(n):
                    side = rng.choice(["buy", "sell"])
                    px = f"{(95 if side == 'buy' else 101) + rng.randint(0, 8)}.00"
                    await pub.l2(btc, [[side, px, rng.choice(["0", "0.5", "3"])]])

            await updates(40)
            await pub.trade(btc, "100.00", "0.25")
            await eventually(lambda: metric(http, "md_follower_cold_messages_total") >= 40, 10)
            view = FixBook()
            c = await FixClient.connect("127.0.0.1", gw.fix_port, on_app=None)
            await c.logged_on()
            c.send("V", md_request("md1", ["BTC-USD"], ["0", "1", "2"]))
            view.apply(await c.next_app())
            assert view.seq["BTC-USD"] == btc.seq
            assert view.books["BTC-USD"].snapshot() == btc.book.snapshot()
            assert metric(http, "md_follower_cold_warmups_total") >= 1
            await updates(20)

            def drain() -> bool:
                while not c.app.empty():
                    view.apply(c.app.get_nowait())
                return view.seq.get("BTC-USD") == btc.seq

            await eventually(drain, 10, interval=0.02)
            assert view.books["BTC-USD"].snapshot() == btc.book.snapshot()
            await c.logout()
