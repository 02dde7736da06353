"""The WebSocket fan-out core hands each client its tier's order ids (gateway_ws/tier_views.py):
one copy per message and policy shared by that policy's clients; other channels untouched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from core import anonymize
from core.anonymize import Anonymizer, ws_anonymizer
from core.follower import Current
from core.settings import Settings
from gateway_ws.fanout import Conn
from gateway_ws.protocol import SubRequest
from gateway_ws.tier_views import TieredFanoutCore
from tests.unit.test_ws_fanout_core import unframe

SECRET = "0123456789abcdef-secret"
TS = "2026-12-06T10:00:00.000000Z"


def _msg(type_: str, channel: str, seq: int, data: dict[str, Any]) -> bytes:
    m = {"type": type_, "channel": channel, "symbol": "BTC-USD", "seq": seq, "epoch": 1}
    return orjson.dumps({**m, "timestamp": TS, "data": data})


SNAP = _msg("l3_snapshot", "l3", 5, {"bids": [["100", "1", "ord-A"]], "asks": []})
UPD = _msg("l3_update", "l3", 6, {"events": [{"op": "delete", "order_id": "ord-A"}]})
L2 = _msg("l2_snapshot", "l2", 5, {"bids": [["100", "1"]], "asks": []})
L2_UPD = _msg("l2_update", "l2", 6, {"changes": [["buy", "100", "0"]]})


class Source:
    connected = True

    def current(self, channel: str, symbol: str, **kw: Any) -> Current:
        raw = SNAP if channel == "l3" else L2
        return Current(channel, symbol, 5, 1, [raw], None, TS)

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None]:
        return 5, 1, None

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"ready": True}


@pytest.fixture
def per_tier() -> Iterator[None]:
    anonymize.install(ws_anonymizer(Settings.from_env({"MD_ANON_SECRET": SECRET})))
    try:
        yield
    finally:
        anonymize.install(None)


def _rig(tiers: list[str], channel: str) -> tuple[TieredFanoutCore, list[Conn]]:
    by_id: dict[int, str] = {}
    core = TieredFanoutCore(
        Source(), buffer_high=1 << 20, wall_ns=lambda: 1, tier_of=lambda c: by_id[c.conn_id]
    )
    conns = []
    for i, t in enumerate(tiers):
        by_id[i] = t
        c = Conn(conn_id=i)
        core.add(c, 0.0)
        core.subscribe(c, SubRequest(channel, "BTC-USD"))
        conns.append(c)
    return core, conns


def test_l3_per_tier_and_one_copy_per_policy(per_tier: None) -> None:
    core, conns = _rig(["internal", "pro", "pro", "anonymous"], "l3")
    core.on_message("l3", "BTC-USD", 6, UPD, orjson.loads(UPD))
    out = dict(core.data_to_send())
    got = [[orjson.loads(p) for p in unframe(out[c])] for c in conns]
    p = Anonymizer(SECRET.encode(), "pseudonym").pseudonym("ord-A", "2026-12-06")
    assert [m[0]["data"]["bids"][0] for m in got] == [
        ["100", "1", "ord-A"],
        ["100", "1", p],
        ["100", "1", p],
        ["100", "1"],
    ]
    assert [m[1]["data"]["events"][0].get("order_id") for m in got] == ["ord-A", p, p, None]
    assert out[conns[1]][1] is out[conns[2]][1]  # the pro copy's frame was built once


def test_other_channels_keep_the_shared_fast_path(per_tier: None) -> None:
    core, conns = _rig(["internal", "anonymous"], "l2")
    assert all(sub.fast for c in conns for sub in c.subs.values())
    core.on_message("l2", "BTC-USD", 6, L2_UPD, orjson.loads(L2_UPD))
    out = dict(core.data_to_send())
    assert out[conns[0]][1] is out[conns[1]][1]  # the same frame for every tier


def test_one_policy_for_all_keeps_the_fast_path() -> None:
    anonymize.install(Anonymizer(SECRET.encode(), "pseudonym"))  # the follower applies it
    try:
        core, conns = _rig(["internal", "anonymous"], "l3")
        assert all(sub.fast for c in conns for sub in c.subs.values())
    finally:
        anonymize.install(None)
