"""The direct feed (core/feed.py) over real loopback sockets: framing, reconnects, bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from core.feed import (
    FEED_BAD_INTEREST,
    FEED_DROPPED,
    HEADER,
    HEARTBEAT_PREFIX,
    MAX_FRAME,
    MAX_INTEREST_FRAME,
    FeedClient,
    FeedServer,
    _Reader,
    parse_addresses,
    parse_interest,
)
from tests.conftest import free_port


async def wait_for(cond: Callable[[], object], limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def connected(
    beat_ride_s: float = 0.02, hold_s: float = 0.25
) -> AsyncIterator[tuple[FeedServer, list[bytes]]]:
    """A started server with one connected client; what the client receives, in order."""
    async with receivers(1, beat_ride_s=beat_ride_s, hold_s=hold_s) as (server, clients, gots):
        yield server, gots[0]


@contextlib.asynccontextmanager
async def receivers(
    n: int, **opts: float
) -> AsyncIterator[tuple[FeedServer, list[FeedClient], list[list[bytes]]]]:
    """A started server with ``n`` connected clients; what each receives, in order."""
    port = free_port()
    server = FeedServer("127.0.0.1", port, **opts)  # type: ignore[arg-type]
    await server.start()
    gots: list[list[bytes]] = [[] for _ in range(n)]
    clients = [FeedClient([("127.0.0.1", port)], got.append) for got in gots]
    for c in clients:
        c.start()
    try:
        await wait_for(lambda: len(server.receivers) == n)
        yield server, clients, gots
    finally:
        for c in clients:
            await c.stop()
        await server.stop()


async def test_frames_arrive_whole_and_in_order_and_the_client_reconnects() -> None:
    async with connected() as (server, got):
        msgs = [b'{"seq":%d}' % i + b"x" * (i * 997 % 9_000) for i in range(200)]  # < high water
        for i, m in enumerate(msgs):
            server.publish(m)
            if i % 7 == 0:
                server.flush()
        server.flush()
        await wait_for(lambda: len(got) == len(msgs))
        assert got == msgs
        (old,) = server.receivers
        assert old.transport is not None
        old.transport.close()  # the receiver's connection breaks ...
        await wait_for(lambda: len(server.receivers) == 1 and old not in server.receivers)
        server.publish(b"after")
        server.flush()
        await wait_for(lambda: got[-1] == b"after")


async def test_a_receiver_that_does_not_read_is_closed_never_waited_for() -> None:
    """Closed, not skipped: an open connection must carry every message (the heads of the
    heartbeats promise it); the receiver reconnects and Kafka fills what it missed."""
    port = free_port()
    server = FeedServer("127.0.0.1", port, high_water=64 << 10)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # connects, never reads
    try:
        await wait_for(lambda: len(server.receivers) == 1)
        (r,) = server.receivers
        before = FEED_DROPPED._value.get()  # noqa: SLF001 - the counter's value
        for _ in range(2_000):
            server.publish(b"y" * 10_000)  # 20 MB: more than any kernel buffer takes
            server.flush()
        assert FEED_DROPPED._value.get() - before == 1  # noqa: SLF001 - once, then closed
        assert r.transport is not None and r.transport.is_closing()
        await wait_for(lambda: not server.receivers)
    finally:
        writer.close()
        await server.stop()


async def test_heartbeat_follows_the_data_and_names_the_last_seq_of_each_stream() -> None:
    async with connected() as (server, got):
        server.publish(b'{"a":1}', (("l2", "BTC-USD"), 3, 7))
        server.publish(b'{"a":2}', (("l2", "BTC-USD"), 3, 8))
        server.publish(b'{"a":3}', (("trades", "ETH-USD"), 3, 2))
        server.heartbeat(1234)
        await wait_for(lambda: len(got) == 4)
        assert got[:3] == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
        assert got[3].startswith(HEARTBEAT_PREFIX)
        assert orjson.loads(got[3]) == {
            "type": "feed_heartbeat",
            "ts_ms": 1234,
            "heads": {"l2:BTC-USD": [3, 8], "trades:ETH-USD": [3, 2]},
        }


async def test_a_heartbeat_rides_the_next_data_write_or_leaves_alone_when_none_comes() -> None:
    async with connected(beat_ride_s=30.0) as (server, got):
        server.publish(b'{"a":1}', (("l2", "BTC-USD"), 1, 1))
        server.heartbeat(1)
        await asyncio.sleep(0.2)
        assert got == []  # waiting for a data write to carry it
        server.publish(b'{"a":2}', (("l2", "BTC-USD"), 1, 2))
        server.flush()  # the next poll's write: the heartbeat leaves with it, in order
        await wait_for(lambda: len(got) == 3)
        assert got[0] == b'{"a":1}' and got[2] == b'{"a":2}'
        assert orjson.loads(got[1])["heads"] == {"l2:BTC-USD": [1, 1]}
        server.beat_ride_s = 0.05
        server.heartbeat(2)  # no data follows: written alone once the ride is over
        await wait_for(lambda: len(got) == 4, limit_s=2.0)
        assert orjson.loads(got[3])["ts_ms"] == 2


async def test_a_corrupt_length_drops_the_connection_not_the_process() -> None:
    port = free_port()
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEADER.pack(5) + b"hello" + HEADER.pack(MAX_FRAME + 1) + b"garbage")
        await writer.drain()
        await asyncio.sleep(5)

    srv = await asyncio.start_server(handle, "127.0.0.1", port)
    client = FeedClient([("127.0.0.1", port)], got.append)
    client.start()
    try:
        await wait_for(lambda: got == [b"hello"])
        await wait_for(lambda: not client.connected[f"127.0.0.1:{port}"])
    finally:
        await client.stop()
        srv.close()


async def test_nobody_listening_is_retried_quietly() -> None:
    client = FeedClient([("127.0.0.1", free_port())], lambda raw: None)
    client.start()
    await asyncio.sleep(0.3)
    assert not any(client.connected.values())
    await client.stop()


def test_addresses_are_checked() -> None:
    assert parse_addresses("127.0.0.1:8031, h:1,") == [("127.0.0.1", 8031), ("h", 1)]
    with pytest.raises(ValueError, match="host:port"):
        parse_addresses("8031")


async def _told(server: FeedServer, hot: set[tuple[str, str]] | None) -> None:
    await wait_for(
        lambda: any(r.hot == (None if hot is None else frozenset(hot)) for r in server.receivers)
    )


async def test_a_write_with_none_of_a_receivers_keys_waits_for_the_heartbeat_in_order() -> None:
    """The interest changes when a receiver is written, never what: the reader of BTC-USD gets
    its key at once, the rest with it or with the next heartbeat, each key's messages in publish
    order; a receiver that never said gets every write at once, in publish order."""
    async with receivers(2, beat_ride_s=0.0, hold_s=30.0) as (server, clients, (btc, every)):
        clients[0].set_interest(["l2:BTC-USD"])
        await _told(server, {("l2", "BTC-USD")})
        server.publish(b'{"e":1}', (("l2", "ETH-USD"), 1, 1))
        server.flush()
        server.publish(b'{"e":2}', (("trades", "ETH-USD"), 1, 1))
        server.flush()
        await wait_for(lambda: len(every) == 2)
        await asyncio.sleep(0.1)
        assert btc == []  # held: nothing it reads
        server.publish(b'{"b":1}', (("l2", "BTC-USD"), 1, 1))
        server.flush()  # its key, first; what was held goes after it, in order
        await wait_for(lambda: len(btc) == 3)
        assert btc == [b'{"b":1}', b'{"e":1}', b'{"e":2}']
        assert every == [b'{"e":1}', b'{"e":2}', b'{"b":1}']
        server.publish(b'{"e":3}', (("l2", "ETH-USD"), 1, 2))
        server.flush()
        await asyncio.sleep(0.1)
        assert len(btc) == 3
        server.heartbeat(7)  # a heartbeat releases everything held, before it
        await wait_for(lambda: len(btc) == 5)
        assert btc[3] == b'{"e":3}' and btc[4].startswith(HEARTBEAT_PREFIX)
        assert btc[3:] == every[3:]


async def test_a_key_both_held_and_in_the_write_keeps_its_order() -> None:
    """The write a receiver reads goes ahead of what was held for it only when no key is in
    both (a partition may carry several symbols), and never when it carries a heartbeat (its
    heads cover the held data)."""
    async with receivers(1, beat_ride_s=0.0, hold_s=30.0) as (server, (client,), (got,)):
        client.set_interest(["l2:BTC-USD"])
        await _told(server, {("l2", "BTC-USD")})
        server.publish(b'{"e":1}', (("l2", "ETH-USD"), 1, 1))
        server.flush()  # held
        server.publish(b'{"b":1}', (("l2", "BTC-USD"), 1, 1))
        server.publish(b'{"e":2}', (("l2", "ETH-USD"), 1, 2))
        server.flush()  # l2:ETH-USD is held and in this write: the held write goes first
        await wait_for(lambda: len(got) == 3)
        assert got == [b'{"e":1}', b'{"b":1}', b'{"e":2}']
        server.publish(b'{"e":3}', (("l2", "ETH-USD"), 1, 3))
        server.flush()  # held
        server.heartbeat(9)
        server.publish(b'{"b":2}', (("l2", "BTC-USD"), 1, 2))
        server.flush()  # heartbeat, then data: everything held before it
        await wait_for(lambda: len(got) == 6)
        assert got[3] == b'{"e":3}' and got[4].startswith(HEARTBEAT_PREFIX)
        assert got[5] == b'{"b":2}'


async def test_a_new_interest_releases_what_was_held_and_null_means_every_key() -> None:
    async with receivers(1, beat_ride_s=0.0, hold_s=30.0) as (server, (client,), (got,)):
        client.set_interest([])  # reads nothing
        await _told(server, set())
        server.publish(b'{"e":1}', (("l2", "ETH-USD"), 1, 1))
        server.flush()
        await asyncio.sleep(0.1)
        assert got == []
        client.set_interest(["l2:ETH-USD"])  # a subscriber arrived: the held write goes now
        await wait_for(lambda: got == [b'{"e":1}'])
        client.set_interest(None)  # back to every key
        await _told(server, None)
        server.publish(b'{"x":1}', (("l3", "SOL-USD"), 1, 1))
        server.flush()
        await wait_for(lambda: got[-1] == b'{"x":1}')


async def test_held_writes_leave_after_hold_s_when_no_heartbeat_comes() -> None:
    """A leader that stops heartbeating (it lost its lease) must not keep a receiver's data."""
    async with receivers(1, beat_ride_s=0.0, hold_s=0.1) as (server, (client,), (got,)):
        client.set_interest(["l2:BTC-USD"])
        await _told(server, {("l2", "BTC-USD")})
        server.publish(b'{"e":1}', (("l2", "ETH-USD"), 1, 1))
        server.flush()
        await wait_for(lambda: got == [b'{"e":1}'], limit_s=2.0)


async def test_held_writes_leave_once_they_pass_hold_max_bytes() -> None:
    """A burst of cold data is not held without bound: past ``hold_max`` it is written."""
    async with receivers(1, beat_ride_s=0.0, hold_s=30.0, hold_max=100) as (server, (c,), (got,)):
        c.set_interest(["l2:BTC-USD"])
        await _told(server, {("l2", "BTC-USD")})
        server.publish(b'{"e":1}', (("l2", "ETH-USD"), 1, 1))
        server.flush()
        await asyncio.sleep(0.1)
        assert got == []  # 11 bytes: held
        big = b'{"e":2,"pad":"' + b"x" * 120 + b'"}'
        server.publish(big, (("l2", "ETH-USD"), 1, 2))
        server.flush()  # would pass 100 bytes held: everything goes, in order
        await wait_for(lambda: got == [b'{"e":1}', big])


async def test_the_interest_is_sent_again_after_a_reconnect() -> None:
    async with receivers(1, beat_ride_s=0.0, hold_s=30.0) as (server, (client,), (got,)):
        client.set_interest(["l2:BTC-USD"])
        await _told(server, {("l2", "BTC-USD")})
        (r,) = server.receivers
        assert r.transport is not None
        r.transport.close()
        await wait_for(lambda: len(server.receivers) == 1 and r not in server.receivers)
        await _told(server, {("l2", "BTC-USD")})


async def test_bad_interest_frames_are_refused_and_the_feed_goes_on() -> None:
    port = free_port()
    server = FeedServer("127.0.0.1", port, beat_ride_s=0.0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await wait_for(lambda: len(server.receivers) == 1)
        (r,) = server.receivers
        before = FEED_BAD_INTEREST._value.get()  # noqa: SLF001 - the counter's value
        for body in (b"{nope", b'{"type":"feed_interest","keys":[1]}', b'{"keys":[]}', b"[]"):
            writer.write(HEADER.pack(len(body)) + body)
        await writer.drain()
        await wait_for(lambda: FEED_BAD_INTEREST._value.get() - before == 4)  # noqa: SLF001
        assert r.hot is None and r in server.receivers  # kept what it had: every key
        server.publish(b'{"a":1}', (("l2", "BTC-USD"), 1, 1))
        server.flush()
        assert await reader.readexactly(4 + 7) == HEADER.pack(7) + b'{"a":1}'
        writer.write(HEADER.pack(MAX_INTEREST_FRAME + 1) + b"x")  # a corrupt length: closed
        await writer.drain()
        await wait_for(lambda: not server.receivers)
        assert FEED_BAD_INTEREST._value.get() - before == 5  # noqa: SLF001
    finally:
        writer.close()
        await server.stop()


def test_interest_frames_parse_to_keys_or_none() -> None:
    assert parse_interest(b'{"type":"feed_interest","keys":null}') is None
    assert parse_interest(b'{"type":"feed_interest","keys":["l2:BTC-USD","status:*"]}') == {
        ("l2", "BTC-USD"),
        ("status", "*"),
    }
    for bad in (b'{"type":"feed_interest","keys":"l2:X"}', b'{"type":"x","keys":null}', b"\xff"):
        with pytest.raises(ValueError):
            parse_interest(bad)


async def test_a_read_hands_its_clients_frames_over_before_the_rest_of_it() -> None:
    """Once a frame reached a reader and the next does not, the rest of the read waits one
    loop turn: what the delivery scheduled (the gateway's write to its clients) goes first.
    Every frame is still handed over, once and in order, also those of a read that came while
    the rest waited."""
    loop = asyncio.get_running_loop()
    seen: list[bytes] = []
    delivered = [0]

    def on_message(raw: bytes) -> None:
        seen.append(raw)
        if raw.startswith(b"hot"):
            delivered[0] += 1
            loop.call_soon(seen.append, b"flush")  # what the hub's kick() does

    def read(*frames: bytes) -> bytes:
        return b"".join(HEADER.pack(len(f)) + f for f in frames)

    reader = _Reader(on_message, "t", delivered=lambda: delivered[0])
    reader.data_received(read(b"hot1", b"hot2", b"cold1", b"cold2", b"cold3"))
    assert seen == [b"hot1", b"hot2", b"cold1"]
    reader.data_received(read(b"cold4"))  # queued behind cold2 and cold3
    assert seen == [b"hot1", b"hot2", b"cold1"]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [b"hot1", b"hot2", b"cold1", b"flush", b"flush", b"cold2", b"cold3", b"cold4"]
    seen.clear()
    reader.data_received(read(b"cold5", b"hot3", b"cold6"))  # one frame left: no turn to wait
    assert seen == [b"cold5", b"hot3", b"cold6"]
    plain = _Reader(seen.append, "t")  # no delivery count (the source intake): as it comes
    seen.clear()
    plain.data_received(read(b"hot4", b"cold7", b"cold8"))
    assert seen == [b"hot4", b"cold7", b"cold8"]


async def test_watched_symbols_are_those_whose_data_some_receiver_reads() -> None:
    """What the leader derives first (aggregator/service.py ``_watched_first``): symbols with a
    data channel read behind some receiver; status keys do not count, a receiver that reads
    every key makes every symbol watched, and a receiver that leaves takes its keys along."""
    async with receivers(2, beat_ride_s=0.0, hold_s=30.0) as (server, (a, b), _):
        assert server.watched_symbols() is None  # neither has said: both read every key
        a.set_interest(["l2:ETH-USD", "status:BTC-USD", "candles_1m:SOL-USD"])
        b.set_interest([])
        await _told(server, set())
        await wait_for(lambda: server.watched_symbols() == {b"ETH-USD", b"SOL-USD"})
        b.set_interest(["status:LTC-USD", "trades:ETH-USD"])
        await _told(server, {("status", "LTC-USD"), ("trades", "ETH-USD")})
        assert server.watched_symbols() == {b"ETH-USD", b"SOL-USD"}
        b.set_interest(None)
        await _told(server, None)
        assert server.watched_symbols() is None
        await b.stop()  # the reader of everything leaves
        await wait_for(lambda: len(server.receivers) == 1)
        assert server.watched_symbols() == {b"ETH-USD", b"SOL-USD"}
        await a.stop()
        await wait_for(lambda: not server.receivers)
        assert server.watched_symbols() == frozenset()


async def test_a_stopped_client_closes_its_connection_at_once() -> None:
    """The server must not go on writing to a receiver that stopped reading (a leader that
    stood down kept its sources pushing into its socket until the high water closed it)."""
    async with receivers(2) as (server, (a, _b), _):
        await a.stop()
        await wait_for(lambda: len(server.receivers) == 1, limit_s=1.0)
