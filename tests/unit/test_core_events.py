"""core/events.py: one declaration per input event, so building and decoding cannot drift."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import events as ev
from core.symbols import default_info

T0 = 1_795_500_000_000_000_000

SAMPLES: list[ev.Event] = [
    ev.Open("BTC-USD", T0, "a", "buy", "100.50", "1.5"),
    ev.Change("BTC-USD", T0, "a", "buy", "1.0", price="100.50"),
    ev.Done("BTC-USD", T0, "a", "buy", "canceled", price="100.50", remaining_size="1.0"),
    ev.Match("BTC-USD", T0, "7", "a", "b", "sell", "100.50", "0.5"),
    ev.BookSnapshot("SKL-USD", T0, [["0.3", "10"]], [["0.31", "5"]], source="coinbase"),
    ev.BookUpdate("SKL-USD", T0, [["buy", "0.3", "0"]], source="coinbase"),
    ev.Trade("SKL-USD", T0, "9", "buy", "0.31", "1", source="coinbase"),
    ev.symbol_info(default_info("BTC-USD"), T0),
    ev.Reset("BTC-USD", T0, "restart"),
]
BAD_VALUES: list[Any] = [123, 1.5, -1, "", "x", "-1", "NaN", "1e999", None, [], {}, True, "up"]


def test_done_with_a_number_as_price_is_refused_when_built() -> None:
    # the drift of issue 14: the constructor took price=123, the decoder refused the encoded event
    with pytest.raises(ev.EventError):
        ev.done("BTC-USD", T0, "a", "buy", "canceled", price=123)  # type: ignore[arg-type]
    with pytest.raises(ev.EventError):
        ev.done("BTC-USD", T0, "a", "buy", "canceled", remaining_size="-1")


def _init_kwargs(e: ev.Event) -> dict[str, Any]:
    d = e.to_dict()
    d.pop("type")
    if isinstance(e, ev.SymbolInfoEvent):
        d["info"] = e.info
    return d


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda e: e.type)
@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
def test_built_and_decoded_accept_exactly_the_same_values(sample: ev.Event, bad: Any) -> None:
    """For every field of every event: a value the constructor refuses, the decoder refuses,
    and what the constructor accepts survives encode -> decode unchanged."""
    for name in (f.name for f in fields(sample) if f.init):
        kwargs = _init_kwargs(sample)
        kwargs[name] = bad
        wire = {"type": sample.type, **sample.to_dict(), name: bad}
        try:
            built: ev.Event | None = type(sample)(**kwargs)
        except (ev.EventError, TypeError):
            built = None
        try:
            decoded: ev.Event | None = ev.from_dict(wire)
        except ev.EventError:
            decoded = None
        if built is None:
            assert decoded is None, f"{sample.type}.{name}={bad!r}: decoded but not buildable"
        else:
            assert ev.decode(ev.encode(built)).to_dict() == built.to_dict()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda e: e.type)
def test_round_trip_keeps_every_field(sample: ev.Event) -> None:
    back = ev.decode(ev.encode(sample))
    assert type(back) is type(sample)
    for f in fields(sample):
        assert getattr(back, f.name) == getattr(sample, f.name), f.name


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=130), st.floats()))
def test_a_fast_path_never_accepts_what_its_check_refuses(v: object) -> None:
    for cls in {type(e) for e in SAMPLES}:
        for name, check, _into, fast in cls.CHECKS:
            if fast is None:
                continue
            if eval(fast, {"SIDES": ev.SIDES, "v": v}):  # noqa: S307 - the class's own expression
                assert check(v, name) == v, (cls.type, name, v)


def test_unknown_type_and_missing_fields_are_event_errors() -> None:
    with pytest.raises(ev.EventError, match="unknown event type"):
        ev.from_dict({"type": "teleport", "symbol": "BTC-USD", "ts": 1})
    with pytest.raises(ev.EventError, match="order_id"):
        ev.from_dict({"type": "open", "symbol": "BTC-USD", "ts": 1, "side": "buy"})
    with pytest.raises(ev.EventError, match="info.symbol"):
        ev.SymbolInfoEvent("ETH-USD", 1, default_info("BTC-USD"))
