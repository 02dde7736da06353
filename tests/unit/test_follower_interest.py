"""The follower tells the direct feed which keys its process reads (core/feed.py interest), so
the leader holds writes a gateway would only keep cold. Real loopback sockets, no Kafka."""

from __future__ import annotations

from core.feed import FEED_IDLE_BEATS, FeedClient, FeedServer
from core.follower import StreamFollower
from core.settings import Settings
from tests.conftest import free_port
from tests.unit.test_core_feed import wait_for
from tests.unit.test_follower_join import tick

BTC = ("ticker", "BTC-USD")


async def test_the_follower_announces_its_read_keys_at_once_on_a_query_and_on_each_heartbeat() -> (
    None
):
    port = free_port()
    server = FeedServer("127.0.0.1", port, beat_ride_s=0.0, hold_s=30.0)
    await server.start()
    f = StreamFollower(Settings())
    f.join.on_snapshot(b"ticker:BTC-USD", tick(1), 0)
    f.join.on_snapshot(b"stats:BTC-USD", tick(1, channel="stats"), 0)
    reads: set[tuple[str, str]] = set()
    f._feed = FeedClient([("127.0.0.1", port)], f._on_direct)  # noqa: SLF001 - no Kafka here
    f.set_interest(lambda c, s: (c, s) in reads)
    f._feed.start()  # noqa: SLF001

    def told() -> frozenset[tuple[str, str]] | None | str:
        return next(iter(server.receivers)).hot if server.receivers else "none"

    try:
        await wait_for(lambda: told() == frozenset())  # reads nothing yet: sent on connect
        reads.add(BTC)  # a subscriber arrives; its snapshot query tells the feed at once
        assert f.current(*BTC) is not None
        await wait_for(lambda: told() == {BTC})
        reads.clear()  # it left: the next heartbeat's recount says so
        server.heartbeat(1)
        await wait_for(lambda: told() == frozenset())
        f.set_interest(None)  # a process that reads everything
        await wait_for(lambda: told() is None)
    finally:
        await f._feed.stop()  # noqa: SLF001
        await server.stop()


async def test_an_idle_follower_waits_longer_for_heartbeats_and_less_once_it_reads() -> None:
    """A process that reads no key gets every FEED_IDLE_BEATS-th heartbeat (core/feed.py): its
    feed's silence timeout is that much longer, so the Kafka backup stays paused; a key read
    brings back the ordinary timeout, counted from then (the held heartbeats are on their way)."""
    port = free_port()
    server = FeedServer("127.0.0.1", port, beat_ride_s=0.0, hold_s=30.0)
    await server.start()
    f = StreamFollower(Settings())
    f.join.on_snapshot(b"ticker:BTC-USD", tick(1), 0)
    reads: set[tuple[str, str]] = set()
    f._feed = FeedClient([("127.0.0.1", port)], f._on_direct)  # noqa: SLF001 - no Kafka here
    normal = f.feed_timeout_s
    assert f.feed_silence_s() == normal  # not told anything yet: every key
    f.set_interest(lambda c, s: (c, s) in reads)
    try:
        assert f.feed_silence_s() == normal * FEED_IDLE_BEATS
        f._beat_at = 1.0  # noqa: SLF001 - the last heartbeat long ago
        reads.add(BTC)
        assert f.current(*BTC) is not None  # a subscriber's query: the feed is told at once
        assert f.feed_silence_s() == normal
        assert f._beat_at > 1.0  # noqa: SLF001 - the shorter timeout counts from now
        f.set_interest(None)
        assert f.feed_silence_s() == normal
    finally:
        await server.stop()
