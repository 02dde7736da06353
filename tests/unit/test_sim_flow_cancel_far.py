"""The simulator's bounded book cancels the order farthest from the mid, the earliest of equals:
the two-look version (aggregator/sources/flow.py) must pick exactly what a scan of every resting
order picks, so the same seed still gives the same events."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aggregator import events as ev
from aggregator.sources.flow import OrderFlow


class ScanFlow(OrderFlow):
    """The reference: a scan of every resting order in arrival order (the earlier code)."""

    def _cancel_far(self, ts: int) -> list[ev.AnyEvent]:
        e = self.engine
        far = max(e.orders.values(), key=lambda o: abs(o.price - self.mid))
        return e.cancel(far.order_id, ts)


@pytest.mark.parametrize(
    "symbol,seed,max_orders,tick",
    [
        ("BTC-USD", 42, 150, Decimal("0.01")),
        ("ETH-USD", 7, 40, Decimal("0.01")),  # a small book: most steps cancel the farthest
        ("LTC-USD", 3, 8, Decimal("0.01")),  # few levels: ties at both ends and single levels
        ("EUR-USD", 11, 30, Decimal("0.00001")),
    ],
)
def test_same_events_as_a_full_scan(symbol: str, seed: int, max_orders: int, tick: Decimal) -> None:
    fast = OrderFlow(symbol, seed, tick=tick, max_orders=max_orders)
    scan = ScanFlow(symbol, seed, tick=tick, max_orders=max_orders)
    far_steps = 0
    for i in range(6000):
        full = len(fast.engine.orders) >= fast.max_orders
        a, b = fast.step(i), scan.step(i)
        assert [x.to_dict() for x in a] == [x.to_dict() for x in b], i
        far_steps += full
    assert far_steps > 100  # the case under test happened
    assert fast.engine.orders.keys() == scan.engine.orders.keys()


def _cancelled(events: list[ev.AnyEvent]) -> list[str]:
    return [x.order_id for x in events if isinstance(x, ev.Done)]


def test_ties_go_to_the_earliest_order() -> None:
    flow = OrderFlow("BTC-USD", 1, max_orders=3)
    e = flow.engine
    flow.mid = 1000
    e.limit("b1", "buy", 990, 1, 0)  # 10 below the mid
    e.limit("a1", "sell", 1010, 1, 0)  # 10 above: a tie, b1 is older
    e.limit("a2", "sell", 1010, 1, 0)
    assert _cancelled(flow._cancel_far(1)) == ["b1"]
    assert _cancelled(flow._cancel_far(2)) == ["a1"]
    e.limit("b2", "buy", 995, 1, 0)
    assert _cancelled(flow._cancel_far(3)) == ["a2"]
