"""Pure parts of the hub: frame bytes, conflation merging, cross rates; and the docs stay in sync."""

from __future__ import annotations

import pathlib
import re
from decimal import Decimal
from typing import Any

import orjson
import pytest
import yaml
from websockets.frames import Frame, Opcode

from core.book import L2Book
from core.follower import StreamJoin
from gateway_ws.client import frame
from gateway_ws.conflation import Conflator
from gateway_ws.rates import CrossRates
from tests.unit.test_follower_join import Producer, tick

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_frame_matches_the_websockets_serializer(n: int, binary: bool) -> None:
    payload = b"x" * n
    want = Frame(Opcode.BINARY if binary else Opcode.TEXT, payload).serialize(
        mask=False, extensions=[]
    )
    assert frame(payload, binary) == want


def test_conflator_merges_levels_last_size_wins() -> None:
    p = Producer()
    snap_book = L2Book()
    g = Conflator(("l2", "BTC-USD"), 1000)
    assert g.take() is None
    for changes in (
        [["buy", "10", "1"]],
        [["buy", "10", "2"], ["sell", "11", "1"]],
        [["sell", "11", "0"]],
    ):
        raw = p.update(changes)
        g.add(p.seq, raw, orjson.loads(raw))
    item = g.take()
    assert item is not None
    seq, raw, parsed = item
    assert seq == 3 and parsed["first_seq"] == 1 and parsed["conflated"] is True
    assert sorted(parsed["data"]["changes"]) == [["buy", "10", "2"], ["sell", "11", "0"]]
    snap_book.apply(parsed["data"]["changes"])
    assert snap_book.checksum() == parsed["checksum"] == p.book.checksum()
    assert orjson.loads(raw) == parsed
    assert g.take() is None  # emptied


def test_conflator_whole_value_channels_keep_original_bytes() -> None:
    g = Conflator(("ticker", "BTC-USD"), 1000)
    for s in (1, 2, 3):
        g.add(s, tick(s), orjson.loads(tick(s)))
    assert g.take() == (3, tick(3), orjson.loads(tick(3)))


class _F:
    """Just enough of StreamFollower for CrossRates."""

    def __init__(self, prices: dict[str, str]) -> None:
        self.join = StreamJoin()
        for i, (sym, px) in enumerate(prices.items()):
            raw = orjson.dumps(
                {
                    "type": "ticker",
                    "channel": "ticker",
                    "symbol": sym,
                    "seq": 1,
                    "epoch": 1,
                    "timestamp": f"2026-01-01T00:00:0{i}.000000Z",
                    "data": {"last_price": px},
                }
            )
            self.join.on_stream(raw)

    def current(self, channel: str, symbol: str, **kw: Any) -> Any:
        return self.join.current(channel, symbol, **kw)


def test_cross_rates_direct_inverse_and_via_usd() -> None:
    r = CrossRates(_F({"EUR-USD": "1.25", "GBP-USD": "1.5", "BTC-EUR": "40000"}))  # type: ignore[arg-type]
    assert r.rate("USD", "EUR") == Decimal("0.8")
    assert r.rate("EUR", "USD") == Decimal("1.25")
    assert abs(r.rate("EUR", "GBP") - Decimal("1.25") / Decimal("1.5")) < Decimal("1e-20")  # type: ignore[operator]
    assert r.rate("USD", "JPY") is None
    conv = r.convert(
        {"symbol": "BTC-USD", "data": {"last_price": "50000", "volume_24h": "3", "best_bid": None}},
        "EUR",
    )
    assert conv is not None and conv["data"] == {
        "last_price": "40000",
        "volume_24h": "3",
        "best_bid": None,
    }
    assert conv["currency"] == "EUR"


def test_asyncapi_parses_and_lists_every_error_code() -> None:
    doc = yaml.safe_load((ROOT / "docs/asyncapi.yaml").read_text())
    codes = set(doc["components"]["messages"]["error"]["payload"]["properties"]["code"]["enum"])
    src = "".join(
        (ROOT / f"gateway_ws/{name}.py").read_text() for name in ("protocol", "server", "fanout")
    )
    used = (
        set(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', src))
        | set(re.findall(r'"code": "([a-z_]+)"', src))
        | set(re.findall(r'self\.error\("([a-z_]+)"', src))
    )
    assert used and used <= codes, used - codes
    prose = (ROOT / "docs/websocket.md").read_text()
    assert all(f"`{c}`" in prose for c in used if c != "too_many_connections")
