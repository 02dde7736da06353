"""core/messages.py: the output message declarations, their strict decode, and the REST models
that serve them."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from core import messages as m
from gateway_rest import models

GOLDEN = Path(__file__).parents[1] / "fixtures" / "playback" / "golden.ndjson.gz"


def _golden_messages() -> list[dict[str, Any]]:
    out = []
    for line in gzip.decompress(GOLDEN.read_bytes()).splitlines():
        rec = orjson.loads(line)
        if rec[0] != "state":
            out.append(rec[-1])
    return out


def test_everything_the_aggregator_published_conforms() -> None:
    msgs = _golden_messages()
    assert {x["type"] for x in msgs} == set(m.DATA)  # the recording covers every message type
    for x in msgs:
        assert m.decode(orjson.dumps(x)) == x


def _one(type_: str) -> dict[str, Any]:
    return copy.deepcopy(next(x for x in _golden_messages() if x["type"] == type_))


@pytest.mark.parametrize(
    ("type_", "mutate", "where"),
    [
        ("trade", lambda x: x["data"].pop("trade_id"), "trade.data"),
        ("trade", lambda x: x["data"].update(id="1"), "trade.data"),  # no aliases
        ("trade", lambda x: x["data"].update(side="up"), "trade.data.side"),
        ("candle", lambda x: x["data"].update(bucket=x["data"].pop("start")), "candle.data"),
        ("candle", lambda x: x["data"].update(trades="3"), "candle.data.trades"),
        ("l2_update", lambda x: x["data"].update(changes=[["buy", "1", 1]]), "changes[0][2]"),
        ("ticker", lambda x: x.update(seq="1"), "message.seq"),
        ("ticker", lambda x: x.update(type="teleport"), "message.type"),
        ("status", lambda x: x["data"].update(state="asleep"), "status.data.state"),
        ("stats", lambda x: x.pop("epoch"), "message"),
    ],
)
def test_a_message_off_its_declaration_is_refused(type_: str, mutate: Any, where: str) -> None:
    x = _one(type_)
    mutate(x)
    with pytest.raises(m.MessageError) as exc:
        m.decode(orjson.dumps(x))
    assert where in str(exc.value)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', b"null"])
def test_garbage_is_a_message_error(raw: bytes) -> None:
    with pytest.raises(m.MessageError):
        m.decode(raw)


def _keys(td: Any) -> set[str]:
    return set(td.__annotations__)


def test_rest_models_serve_the_declared_fields() -> None:
    """The REST bodies are built from these messages: a field renamed on one side fails here."""
    assert set(models.TradeEntry.model_fields) - {"seq"} == _keys(m.TradeData) - {
        "maker_order_id",
        "taker_order_id",
    }
    assert set(models.CandleEntry.model_fields) <= _keys(m.CandleData)
    assert set(models.SymbolEntry.model_fields) - {"seq"} <= _keys(m.StatusData)
    assert {"bids", "asks"} <= set(models.OrderBook.model_fields)
    assert _keys(m.L2Data) == {"bids", "asks"}


def test_rest_ticker_and_stats_bodies_are_the_declared_data_plus_position() -> None:
    """The cache writer stores ``data`` plus the stream position; REST serves those bytes."""
    from core.cache_keys import RELATIVE
    from storage.cache_model import CacheModel
    from testkit import fake_aggregator as fake

    model = CacheModel()
    model.on_stream_record(fake.ticker("BTC-USD", 3))
    model.on_stream_record(fake.stats("BTC-USD", 4))
    writes = model.take_writes()
    position = {"symbol", "seq", "epoch", "timestamp"}
    ticker = orjson.loads(writes.strings[RELATIVE.ticker("BTC-USD")])
    stats = orjson.loads(writes.strings[RELATIVE.stats("BTC-USD")])
    assert set(ticker) == _keys(m.TickerData) | position
    assert set(stats) == _keys(m.StatsData) | position
