"""The md.in schema: round trips, rejection of bad input, and derived-stream details."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import events as ev
from aggregator.sources.flow import OrderFlow
from aggregator.state import SymbolState
from core.symbols import default_info

T0 = 1_795_500_000_000_000_000  # 2026-11-24T..., ns
MIN = 60_000_000_000


def test_round_trip_every_type() -> None:
    samples = [
        ev.open_("BTC-USD", T0, "a", "buy", "100.50", "1.5"),
        ev.change("BTC-USD", T0, "a", "buy", "1.0", price="100.50"),
        ev.done("BTC-USD", T0, "a", "buy", "canceled", price="100.50", remaining_size="1.0"),
        ev.match("BTC-USD", T0, "7", "a", "b", "sell", "100.50", "0.5"),
        ev.book_snapshot("SKL-USD", T0, [["0.3", "10"]], [["0.31", "5"]], source="coinbase"),
        ev.book_update("SKL-USD", T0, [["buy", "0.3", "0"]], source="coinbase"),
        ev.trade("SKL-USD", T0, "9", "buy", "0.31", "1", source="coinbase"),
        ev.symbol_info(default_info("BTC-USD"), T0),
        ev.reset("BTC-USD", T0, "restart"),
    ]
    for e in samples:
        back = ev.decode(ev.encode(e))
        assert type(back) is type(e)
        assert back.to_dict() == e.to_dict()


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not json",
        b"[]",
        b'"x"',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"buy","price":"1","size":"0"}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"buy","price":"NaN","size":"1"}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"buy","price":1.5,"size":"1"}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"up","price":"1","size":"1"}',
        b'{"type":"open","symbol":"BTCUSD","ts":1,"order_id":"a","side":"buy","price":"1","size":"1"}',
        b'{"type":"open","symbol":"BTC-USD","ts":"now","order_id":"a","side":"buy","price":"1","size":"1"}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"side":"buy","price":"1","size":"1"}',
        b'{"type":"match","symbol":"BTC-USD","ts":1,"trade_id":"1","maker_order_id":"a","taker_order_id":"b",'
        b'"taker_side":"buy","price":"-1","size":"1"}',
        b'{"type":"book_update","symbol":"BTC-USD","ts":1,"changes":[["buy","1"]]}',
        b'{"type":"book_snapshot","symbol":"BTC-USD","ts":1,"bids":"x","asks":[]}',
        b'{"type":"symbol_info","symbol":"BTC-USD","ts":1,"info":{"symbol":"ETH-USD"}}',
        b'{"type":"teleport","symbol":"BTC-USD","ts":1}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"buy","price":"1e999999","size":"1"}',
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"a","side":"buy","price":"1","size":"1e-30"}',
    ],
)
def test_bad_input_is_an_event_error(bad: bytes) -> None:
    with pytest.raises(ev.EventError):
        ev.decode(bad)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(ev.EventError):
        ev.decode(data)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "symbol",
                "ts",
                "order_id",
                "side",
                "price",
                "size",
                "changes",
                "bids",
                "asks",
                "info",
                "trade_id",
                "taker_side",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=8),
            st.lists(st.text(max_size=4)),
            st.sampled_from(["open", "match", "book_update", "BTC-USD", "buy", "1.5"]),
        ),
    )
)
def test_fuzzed_objects_never_crash_the_state(d: dict) -> None:
    s = SymbolState("BTC-USD", 1)
    try:
        e = ev.decode(orjson.dumps(d))
    except ev.EventError:
        return
    s.apply(e)
    s.flush(0)


def test_same_seed_same_events() -> None:
    def run(seed: int) -> list[dict]:
        f = OrderFlow("ETH-USD", seed)
        return [e.to_dict() for i in range(500) for e in f.step(T0 + i)]

    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert a != c
    assert {e["type"] for e in a} == {"open", "change", "done", "match"}


def test_candles_close_on_event_time_and_l2_only_drops_l3() -> None:
    s = SymbolState("SKL-USD", 1)
    s.apply(ev.symbol_info(default_info("SKL-USD", "coinbase"), T0))
    s.apply(ev.book_snapshot("SKL-USD", T0, [["0.30", "10"]], [["0.31", "5"]]))
    s.apply(ev.trade("SKL-USD", T0 + 1, "1", "buy", "0.31", "2"))
    s.apply(ev.trade("SKL-USD", T0 + 2, "2", "sell", "0.30", "1"))
    out = s.flush(1)
    chans = [c for c, _ in out]
    assert "l3" not in chans
    status = next(m for c, m in out if c == "status")
    assert "l3" not in status["data"]["channels"] and status["data"]["state"] == "l2_only"
    c1 = next(m for c, m in out if c == "candles_1m")["data"]
    assert (
        c1["open"],
        c1["high"],
        c1["low"],
        c1["close"],
        c1["volume"],
        c1["trades"],
        c1["closed"],
    ) == ("0.31", "0.31", "0.30", "0.30", "3", 2, False)
    assert c1["vwap"] == "0.30666667"
    # any event past the bucket end closes it, exactly once
    s.apply(ev.book_update("SKL-USD", T0 + 2 * MIN, [["buy", "0.29", "1"]]))
    out = s.flush(2)
    finals = [m["data"] for c, m in out if c == "candles_1m"]
    assert len(finals) == 1 and finals[0]["closed"] is True and finals[0]["trades"] == 2
    assert not [m for c, m in s.flush(3) if c == "candles_1m"]
    snaps = dict(s.snapshots(4))
    assert snaps["candles_1m:SKL-USD"]["data"] == finals[0]  # no open bucket: the final record
    assert "l3:SKL-USD" not in snaps


def test_ticker_and_stats_values() -> None:
    s = SymbolState("BTC-USD", 1)
    s.apply(ev.open_("BTC-USD", T0, "b1", "buy", "99.00", "1.00"))
    s.apply(ev.open_("BTC-USD", T0, "a1", "sell", "101.00", "2.00"))
    s.apply(ev.match("BTC-USD", T0, "1", "a1", "t", "buy", "101.00", "0.50"))
    out = dict(s.flush(0))
    t = out["ticker"]["data"]
    assert (t["best_bid"], t["best_ask"], t["best_ask_size"], t["last_price"], t["last_side"]) == (
        "99.00",
        "101.00",
        "1.50",
        "101.00",
        "buy",
    )
    assert t["volume_24h"] == "0.50" and t["open_24h"] == "101.00" and t["change_24h"] == "0.00"
    st_ = out["stats"]["data"]
    assert (st_["spread"], st_["mid"], st_["vwap"]) == ("2.00", "100", "101")
