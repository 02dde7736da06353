"""The Coinbase parser without sockets: recorded payloads in, md.in events out."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import events as ev
from aggregator.sources.coinbase import CoinbaseParser, load_catalogue
from aggregator.sources.recording import DEFAULT_CATALOGUE, DEFAULT_FILE
from aggregator.state import SymbolState

RECORDING = DEFAULT_FILE  # the checkout's ../shared/data, never an absolute path
CATALOGUE = DEFAULT_CATALOGUE
NS = 1_618_677_817_000_000_000


def recorded(n: int | None = None) -> list[bytes]:
    lines = RECORDING.read_bytes().splitlines()
    return [orjson.dumps(orjson.loads(x)["message"]) for x in lines[:n]]


def test_recording_parses_to_l2_events_and_trades() -> None:
    msgs = recorded()
    p = CoinbaseParser(["SKL-USD", "SKL-BTC", "BAND-GBP", "NMR-EUR", "BAND-BTC"])
    out = [e for m in msgs for e in p.receive(m, NS)]
    kinds = {type(e).__name__ for e in out}
    assert kinds == {"BookSnapshot", "BookUpdate", "Trade"}
    assert p.counts["malformed"] == 0 and p.counts["gaps"] == 0
    trades = [e for e in out if isinstance(e, ev.Trade)]
    assert len(trades) == 85
    # maker side "sell" on the wire means the taker bought
    first = next(orjson.loads(m) for m in msgs if b'"type":"match"' in m)
    t = next(e for e in trades if e.trade_id == str(first["trade_id"]))
    assert t.taker_side == {"buy": "sell", "sell": "buy"}[first["side"]]
    # event time is the feed's time field
    assert t.ts // 1000 == 1618677817089723


def test_update_before_snapshot_is_dropped_and_gap_asks_resync() -> None:
    p = CoinbaseParser(["SKL-USD"])
    upd = b'{"type":"l2update","product_id":"SKL-USD","changes":[["buy","0.79","10"]],"time":"2021-04-17T16:43:37.075687Z"}'
    assert p.receive(upd, NS) == [] and p.counts["stale"] == 1
    snap = b'{"type":"snapshot","product_id":"SKL-USD","bids":[["0.79","5"]],"asks":[["0.80","5"]]}'
    assert isinstance(p.receive(snap, NS)[0], ev.BookSnapshot)
    assert isinstance(p.receive(upd, NS)[0], ev.BookUpdate)

    def match(tid: int) -> bytes:
        return orjson.dumps(
            {
                "type": "match",
                "trade_id": tid,
                "maker_order_id": "m",
                "taker_order_id": "t",
                "side": "buy",
                "size": "1",
                "price": "0.79",
                "product_id": "SKL-USD",
                "sequence": 100 + tid,
                "time": "2021-04-17T16:43:37.1Z",
            }
        )

    assert len(p.receive(match(10), NS)) == 1
    assert len(p.receive(match(11), NS)) == 1 and not p.resync
    assert p.receive(match(11), NS) == []  # repeated
    assert len(p.receive(match(13), NS)) == 1  # 12 lost: published, and a resync is due
    assert p.take_resync() == {"SKL-USD"} and p.counts["gaps"] == 1
    assert p.receive(upd, NS) == []  # until the fresh snapshot
    assert isinstance(p.receive(snap, NS)[0], ev.BookSnapshot)
    assert p.receive(match(12), NS) == []  # late: older than the last trade
    hb = b'{"type":"heartbeat","sequence":1,"last_trade_id":15,"product_id":"SKL-USD","time":"2021-04-17T16:43:38Z"}'
    p.receive(hb, NS)
    assert p.take_resync() == {"SKL-USD"}
    p.receive(snap, NS)
    p.receive(hb, NS)  # the same heartbeat again: the lost trades are written off, no resync loop
    assert p.take_resync() == set()


def test_full_channel_orders_and_sequence_gap() -> None:
    p = CoinbaseParser(["BTC-USD"], full=True)

    def msg(seq: int, **kw: object) -> bytes:
        return orjson.dumps(
            {"product_id": "BTC-USD", "sequence": seq, "time": "2021-04-17T16:43:37.1Z", **kw}
        )

    out = []
    out += p.receive(msg(1, type="received", order_id="a", side="buy"), NS)
    out += p.receive(
        msg(2, type="open", order_id="a", side="buy", price="100.00", remaining_size="2"), NS
    )
    out += p.receive(
        msg(3, type="open", order_id="b", side="sell", price="101.00", remaining_size="1"), NS
    )
    out += p.receive(
        msg(4, type="change", order_id="a", side="buy", price="100.00", new_size="1.5"), NS
    )
    out += p.receive(
        msg(
            5,
            type="match",
            trade_id=1,
            maker_order_id="b",
            taker_order_id="c",
            side="sell",
            size="1",
            price="101.00",
        ),
        NS,
    )
    out += p.receive(
        msg(
            6,
            type="done",
            order_id="b",
            side="sell",
            reason="filled",
            price="101.00",
            remaining_size="0",
        ),
        NS,
    )
    assert [e.type for e in out] == ["open", "open", "change", "match", "done"]
    m = next(e for e in out if isinstance(e, ev.Match))
    assert m.taker_side == "buy" and m.maker_order_id == "b" and m.src_seq == 5
    s = SymbolState("BTC-USD", 1)
    for e in out:
        s.apply(e)
    assert s.book.top("buy") == [("100.00", "1.5")] and s.book.top("sell") == []
    assert (
        p.receive(msg(6, type="done", order_id="a", side="buy", reason="canceled"), NS) == []
    )  # stale
    gap = p.receive(msg(9, type="done", order_id="a", side="buy", reason="canceled"), NS)
    assert [e.type for e in gap] == ["reset"] and p.take_resync() == {"BTC-USD"}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "product_id",
                    "changes",
                    "bids",
                    "asks",
                    "trade_id",
                    "side",
                    "price",
                    "size",
                    "sequence",
                    "time",
                    "last_trade_id",
                    "order_id",
                    "remaining_size",
                ]
            ),
            st.one_of(
                st.none(),
                st.integers(-(2**63), 2**63 - 1),
                st.text(max_size=12),
                st.lists(st.lists(st.text(max_size=5))),
                st.sampled_from(
                    [
                        "snapshot",
                        "l2update",
                        "match",
                        "heartbeat",
                        "open",
                        "done",
                        "SKL-USD",
                        "buy",
                        "sell",
                        "1.5",
                        "2021-04-17T16:43:37Z",
                    ]
                ),
            ),
        ).map(orjson.dumps),
    )
)
def test_garbage_from_the_feed_never_raises(raw: bytes) -> None:
    p = CoinbaseParser(["SKL-USD"], full=False)
    p.receive(
        b'{"type":"snapshot","product_id":"SKL-USD","bids":[["1","1"]],"asks":[["2","1"]]}', NS
    )
    for e in p.receive(raw, NS):
        assert isinstance(e, ev.Event)
    pf = CoinbaseParser(["SKL-USD"], full=True)
    pf.receive(raw, NS)


def test_catalogue_from_products_file() -> None:
    cat = load_catalogue(CATALOGUE, ["SKL-USD", "BAND-GBP", "ZZZ-USD"], full=False)
    assert str(cat["SKL-USD"].tick_size) == "0.0001" and "l3" not in cat["SKL-USD"].channels
    assert cat["SKL-USD"].source == "coinbase" and cat["BAND-GBP"].status == "online"
    assert cat["ZZZ-USD"].symbol == "ZZZ-USD"  # unknown product: defaults, still listed
