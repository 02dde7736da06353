"""A currency with no conversion path is a clear error at subscribe time (issue 15 item 5):
the path rules (gateway_ws/rates.conversion_path) agree with the conversion itself
(CrossRates.rate), and the session refuses the target naming what would have been needed."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from core.codec import ns_from_iso
from gateway_ws.protocol import Principal, Session, Subscribe, Tier
from gateway_ws.rates import CrossRates, conversion_path
from tests.unit.test_ws_hub_parts import _F

FOLLOWED = {"BTC-USD": "50000", "EUR-USD": "1.25", "GBP-USD": "1.5", "BTC-EUR": "40000"}


def has(sym: str) -> bool:
    return sym in FOLLOWED


@pytest.mark.parametrize(
    ("quote", "currency", "path"),
    [
        ("USD", "USD", ()),
        ("USD", "EUR", ("EUR-USD",)),
        ("EUR", "USD", ("EUR-USD",)),
        ("EUR", "GBP", ("EUR-USD", "GBP-USD")),
        ("EUR", "BTC", ("BTC-EUR",)),
        ("USD", "CHF", None),
        ("GBP", "JPY", None),  # GBP-USD is followed, the USD-JPY leg is not
    ],
)
def test_conversion_path_names_the_tickers_it_reads(
    quote: str, currency: str, path: tuple[str, ...] | None
) -> None:
    assert conversion_path(quote, currency, has) == path


def test_the_path_rules_are_the_conversion_rules() -> None:
    """Wherever every followed ticker has a price, a path exists exactly when a rate does."""
    rates = CrossRates(_F(FOLLOWED))  # type: ignore[arg-type]
    codes = ("USD", "EUR", "GBP", "BTC", "JPY", "CHF")
    for q, c in itertools.product(codes, codes):
        assert (conversion_path(q, c, has) is None) == (rates.rate(q, c) is None), (q, c)


def session() -> Session:
    return Session(
        principal=Principal(None, Tier("anonymous")),
        is_symbol=lambda s: s in {"BTC-USD", "ETH-USD"},
        ns_from_iso=ns_from_iso,
        can_convert=lambda q, c: conversion_path(q, c, has) is not None,
    )


def feed(s: Session, msg: Any) -> list[dict[str, Any]]:
    s.receive_data(orjson.dumps(msg), 0.0)
    return [orjson.loads(b) for b in s.data_to_send()]


def test_a_currency_without_a_path_is_refused_with_the_reason() -> None:
    s = session()
    out = feed(
        s,
        {
            "type": "subscribe",
            "channel": "ticker",
            "symbol": "BTC-USD",
            "currencies": ["eur", "chf"],
        },
    )
    assert out == [
        {
            "type": "error",
            "code": "no_conversion_path",
            "message": "no conversion from USD to CHF: this gateway follows no ticker of "
            "USD-CHF or CHF-USD",
            "target": "ticker:BTC-USD",
        }
    ]
    assert s.subscriptions == {} and s.events_received() == []
    out = feed(
        s,
        {
            "type": "subscribe",
            "channel": "ticker",
            "symbol": "BTC-USD",
            "currencies": ["EUR", "BTC"],
        },
    )
    assert out[0]["type"] == "subscribed"
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe) and ev.requests[0].currencies == ("EUR", "BTC")
