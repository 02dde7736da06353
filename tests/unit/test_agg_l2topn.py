"""core.l2topn: a client following the view's messages holds exactly the top N of the full book."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.sources.flow import OrderFlow
from aggregator.state import SymbolState
from core.book import L2Book
from core.l2topn import TopNView

T0 = 1_795_500_000_000_000_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 12), st.integers(0, 10_000), st.integers(1, 20))
def test_view_client_equals_top_n_of_full_book(depth: int, seed: int, flush_every: int) -> None:
    flow = OrderFlow("ETH-USD", seed, max_orders=80)
    state = SymbolState("ETH-USD", 5)
    view = TopNView("ETH-USD", depth)
    full = L2Book()
    client = L2Book()
    first = True
    last_seq = 0
    updates = 0
    for i in range(600):
        for e in flow.step(T0 + i):
            state.apply(e)
        if i % flush_every:
            continue
        for ch, msg in state.flush(0):
            if ch != "l2":
                continue
            msg = orjson.loads(orjson.dumps(msg))
            if first:  # start the view from the aggregator's snapshot, as a gateway does
                ((_, snap),) = [s for s in state.snapshots(0) if s[0].startswith("l2:")]
                snap = dict(snap, seq=msg["seq"])
                out = view.on_message(snap)
                assert out is not None and out["type"] == "l2_snapshot"
                client.load(out["data"]["bids"], out["data"]["asks"])
                full.load(snap["data"]["bids"], snap["data"]["asks"])
                first = False
                continue
            full.apply(msg["data"]["changes"])
            out = view.on_message(msg)
            if out is None:
                continue
            updates += 1
            assert out["seq"] == last_seq + 1 and out["epoch"] == 5
            last_seq = out["seq"]
            client.apply(out["data"]["changes"])
            assert client.top_bids() == full.top_bids(depth)
            assert client.top_asks() == full.top_asks(depth)
            assert out["checksum"] == full.checksum(min(depth, 10))
    assert updates > 0


def test_updates_outside_top_n_are_suppressed_and_new_epoch_restarts_seq() -> None:
    v = TopNView("X-Y", 2)
    snap = {
        "type": "l2_snapshot",
        "channel": "l2",
        "symbol": "X-Y",
        "seq": 10,
        "epoch": 1,
        "data": {"bids": [["10", "1"], ["9", "1"], ["8", "1"]], "asks": [["11", "1"]]},
    }
    assert v.on_message(snap)["data"]["bids"] == [["10", "1"], ["9", "1"]]
    deep = {
        "type": "l2_update",
        "channel": "l2",
        "symbol": "X-Y",
        "seq": 11,
        "epoch": 1,
        "data": {"changes": [["buy", "8", "5"]]},
    }
    assert v.on_message(deep) is None
    top = {
        "type": "l2_update",
        "channel": "l2",
        "symbol": "X-Y",
        "seq": 12,
        "epoch": 1,
        "data": {"changes": [["buy", "10", "0"]]},
    }
    out = v.on_message(top)
    assert out["seq"] == 1 and sorted(out["data"]["changes"]) == [
        ["buy", "10", "0"],
        ["buy", "8", "5"],
    ]
    out = v.on_message(dict(snap, epoch=2))
    assert out["seq"] == 0 and out["epoch"] == 2
