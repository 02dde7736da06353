"""The follower tells the direct feed which keys its process reads (core/feed.py interest), so
the leader holds writes a gateway would only keep cold. Real loopback sockets, no Kafka."""

from __future__ import annotations

from core.feed import FeedClient, FeedServer
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
