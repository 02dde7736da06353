"""The ``status`` message names a source switch and its reason (issue 15 item 2): a
``symbol_info`` with a ``reason`` (the failover) or from another source than before sets
``source_reason`` and ``previous_source``, kept while the symbol stays there, in checkpoints too."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aggregator import events as ev
from aggregator.state import SymbolState
from core.symbols import default_info

S = "BTC-USD"
NS = 1_700_000_000_000_000_000


def statuses(state: SymbolState) -> list[dict[str, Any]]:
    return [m["data"] for ch, m in state.flush(NS) if ch == "status"]


def test_a_switch_with_a_reason_is_named_in_the_next_status_and_kept() -> None:
    st = SymbolState(S, 1)
    st.apply(ev.symbol_info(default_info(S, "coinbase"), NS))
    (first,) = statuses(st)
    assert first["source"] == "coinbase"
    assert "source_reason" not in first and "previous_source" not in first
    st.apply(ev.symbol_info(default_info(S, "coinbase_at"), NS, reason="stalled"))
    (switched,) = statuses(st)
    assert switched["source"] == "coinbase_at"
    assert (switched["source_reason"], switched["previous_source"]) == ("stalled", "coinbase")
    # the same entry again (no switch): no new status, and the next one still says why
    st.apply(ev.symbol_info(default_info(S, "coinbase_at"), NS))
    assert statuses(st) == []
    assert st.status_data()["source_reason"] == "stalled"
    # a checkpoint carries it (a standby taking over publishes the same status)
    back = SymbolState.from_state(orjson.loads(orjson.dumps(st.to_state())))
    assert back.status_data() == st.status_data()


def test_two_connections_to_one_feed_still_say_why() -> None:
    """Same source name on both legs: the reason alone marks the switch."""
    st = SymbolState(S, 1)
    st.apply(ev.symbol_info(default_info(S, "coinbase"), NS))
    statuses(st)
    st.apply(ev.symbol_info(default_info(S, "coinbase"), NS, reason="gap"))
    (s,) = statuses(st)
    assert (s["source_reason"], s["previous_source"], s["source"]) == (
        "gap",
        "coinbase",
        "coinbase",
    )


def test_a_source_change_without_reason_says_changed_and_no_switch_leaves_no_trace() -> None:
    st = SymbolState(S, 1)
    st.apply(ev.symbol_info(default_info(S, "simulator"), NS))
    statuses(st)
    assert "switch" not in st.to_state()  # checkpoints without a switch keep their layout
    st.apply(ev.symbol_info(default_info(S, "replay"), NS))
    (s,) = statuses(st)
    assert (s["source_reason"], s["previous_source"]) == ("changed", "simulator")


def test_a_bad_reason_is_refused_like_any_bad_field() -> None:
    raw = ev.symbol_info(default_info(S), NS).to_dict()
    raw["reason"] = 7
    with pytest.raises(ev.EventError, match="reason"):
        ev.from_dict(raw)
    raw["reason"] = "x" * 500
    back = ev.from_dict(raw)
    assert isinstance(back, ev.SymbolInfoEvent) and back.reason == "x" * 200  # cut like reset's
