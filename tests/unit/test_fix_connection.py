"""The acceptor's connection around the session core, with a fake transport (no socket, no Kafka):
application messages queued in one loop pass go out framed in one write, with consecutive
MsgSeqNum(34) and a SendingTime(52) taken at the write; counters reach Prometheus once per pass."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.errors import ConfigError
from core.settings import Settings
from fix_gateway.codec import Body, Parser, encode, parse_utc_timestamp, utc_timestamp
from fix_gateway.config import GatewayConfig
from fix_gateway.server import Connection, Gateway
from fix_gateway.store import MemoryStore


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None


def frames(data: bytes) -> list[Any]:
    p = Parser()
    p.receive_data(data)
    return p.events_received()


def out_total() -> float:
    return REGISTRY.get_sample_value("fix_messages_out_total") or 0.0


async def logged_on(
    tmp_path: Path, store: str = "file", env: dict[str, str] | None = None
) -> tuple[Connection, FakeTransport]:
    s = Settings.from_env({**os.environ, **env} if env else None)
    base = GatewayConfig.from_settings(s)
    cfg = dataclasses.replace(base, store_dir=tmp_path / "store", store=store)
    gw = Gateway(s, cfg)
    conn = Connection(gw)
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    logon: list[tuple[int, str | int]] = [(49, "CLIENT1"), (56, "MDGW"), (34, 1)]
    logon.append((52, utc_timestamp()))
    conn.data_received(encode("A", [*logon, (98, 0), (108, 30), (141, "Y")]))
    assert conn.logged_on and [m.msg_type for m in frames(b"".join(t.writes))] == ["A"]
    t.writes.clear()
    return conn, t


async def test_messages_of_one_pass_leave_in_one_write_framed_at_the_write(tmp_path: Path) -> None:
    conn, t = await logged_on(tmp_path)
    before = out_total()
    conn.send_app("X", Body.of(b"262=a\x01268=0\x01"))
    conn.send_app("X", Body.of(b"262=b\x01268=0\x01"))
    assert t.writes == []  # nothing framed or written inside the pass that queued them
    t0 = utc_timestamp()
    await asyncio.sleep(0)  # the pass ends: one flush
    assert len(t.writes) == 1
    msgs = frames(t.writes[0])
    assert [(m.msg_type, m.get(262), m.get_int(34)) for m in msgs] == [("X", "a", 2), ("X", "b", 3)]
    assert all(parse_utc_timestamp(m.get(52)) >= parse_utc_timestamp(t0) for m in msgs)
    assert len({m.get(52) for m in msgs}) == 1  # one SendingTime for the session's batch
    await asyncio.sleep(0)  # the gateway's export pass
    assert out_total() - before == 3  # the Logon answer and the two X


async def test_messages_queued_for_a_session_that_closed_are_dropped(tmp_path: Path) -> None:
    conn, t = await logged_on(tmp_path)
    conn.send_app("X", Body.of(b"262=a\x01268=0\x01"))
    conn.session.terminate("taken over")  # Logout(5), closed before the pass ends
    conn.send_app("X", Body.of(b"262=b\x01268=0\x01"))  # ignored: the session is closed
    await asyncio.sleep(0)
    sent = [m.msg_type for w in t.writes for m in frames(w)]
    assert sent == ["5"], sent


async def test_memory_store_keeps_the_session_in_memory_only(tmp_path: Path) -> None:
    conn, t = await logged_on(tmp_path, store="memory")
    assert isinstance(conn.session.store, MemoryStore)
    conn.send_app("X", Body.of(b"262=a\x01268=0\x01"))
    await asyncio.sleep(0)
    assert [s.seq for s in conn.session.store.get(1, 10)] == [1, 2]  # Logon answer, X
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*"))


def test_store_kind_is_checked_at_start() -> None:
    with pytest.raises(ConfigError) as e:
        GatewayConfig.from_settings(Settings.from_env({"MD_FIX_STORE": "redis"}))
    assert e.value.key == "MD_FIX_STORE"
    assert GatewayConfig.from_settings(Settings.from_env({})).store == "file"


async def test_microsecond_precision_is_a_deployment_setting(tmp_path: Path) -> None:
    """MD_FIX_TIMESTAMP_PRECISION=micros (any case, as QuickFIX/J spells it) stamps every
    message of every session with 6 fraction digits; the default stays FIX 4.4's milliseconds."""
    conn, t = await logged_on(tmp_path / "us", env={"MD_FIX_TIMESTAMP_PRECISION": "MICROS"})
    before = time.time_ns() // 1000 * 1000
    conn.send_app("X", Body.of(b"262=a\x01268=0\x01"))
    await asyncio.sleep(0)
    (x,) = frames(b"".join(t.writes))
    st = x.get(52)
    assert st is not None and len(st) == 24 and st[17] == "." and st[18:].isdigit()
    assert before <= parse_utc_timestamp(st) <= time.time_ns()
    conn, t = await logged_on(tmp_path / "ms")
    conn.send_app("X", Body.of(b"262=a\x01268=0\x01"))
    await asyncio.sleep(0)
    assert len(frames(b"".join(t.writes))[0].get(52)) == 21


@pytest.mark.parametrize("bad", ["nanos", "us", "6", "millis,micros"])
def test_a_bad_timestamp_precision_stops_the_gateway_at_start(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        Gateway(Settings.from_env({"MD_FIX_TIMESTAMP_PRECISION": bad}))
    assert e.value.key == "MD_FIX_TIMESTAMP_PRECISION"
    assert "millis, micros" in str(e.value) and repr(bad) in str(e.value)


class BrokenTransport(FakeTransport):
    def write(self, data: bytes) -> None:
        raise OSError("broken pipe")


async def test_one_flush_pass_writes_every_session_and_survives_a_broken_one(
    tmp_path: Path,
) -> None:
    """An update queued for many sessions is written by one callback at the end of the pass
    (Gateway.flush_soon), each session's messages in one write; a connection whose write
    raises is logged and skipped, the others still get their data."""
    s = Settings.from_env()
    cfg = dataclasses.replace(GatewayConfig.from_settings(s), store_dir=tmp_path, store="memory")
    gw = Gateway(s, cfg)
    conns, transports = [], []
    for i, peer in enumerate(["CLIENT1", "CLIENT2", "CLIENT3"]):
        gw.cfg.sessions[(peer, "MDGW")] = dataclasses.replace(
            gw.cfg.sessions[("CLIENT1", "MDGW")], peer_comp_id=peer
        )
        conn = Connection(gw)
        t = FakeTransport()
        conn.connection_made(t)  # type: ignore[arg-type]
        logon: list[tuple[int, str | int]] = [(49, peer), (56, "MDGW"), (34, 1)]
        logon.append((52, utc_timestamp()))
        conn.data_received(encode("A", [*logon, (98, 0), (108, 30), (141, "Y")]))
        assert conn.logged_on, peer
        if i == 1:
            t = BrokenTransport()
            conn.transport = t  # type: ignore[assignment]
        t.writes.clear()
        conns.append(conn)
        transports.append(t)
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    real_call_soon = loop.call_soon

    def counting_call_soon(cb: Any, *args: Any, **kw: Any) -> Any:
        scheduled.append(cb)
        return real_call_soon(cb, *args, **kw)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign,assignment]
    try:
        for c in conns:
            c.send_app("X", Body.of(b"262=a\x01268=0\x01"))
            c.send_app("X", Body.of(b"262=b\x01268=0\x01"))
    finally:
        loop.call_soon = real_call_soon  # type: ignore[method-assign]
    assert [getattr(cb, "__name__", "") for cb in scheduled] == ["_flush_all"]
    await asyncio.sleep(0)
    for i in (0, 2):
        assert len(transports[i].writes) == 1
        assert [m.get(262) for m in frames(transports[i].writes[0])] == ["a", "b"]
    assert transports[1].writes == []
