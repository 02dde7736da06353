"""core.anonymize: order ids as per-day pseudonyms or omitted, account fields never leave."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from core import anonymize
from core.anonymize import (
    Anonymizer,
    for_tier,
    parse_tier_policies,
    rest_anonymizers,
    ws_anonymizer,
    ws_policies,
)
from core.errors import ConfigError
from core.follower import _parse
from core.settings import Settings

SECRET = b"0123456789abcdef-secret"
TS = "2026-12-06T10:00:00.000000Z"
SNAP: dict[str, Any] = {
    "type": "l3_snapshot",
    "channel": "l3",
    "symbol": "BTC-USD",
    "seq": 5,
    "epoch": 1,
    "timestamp": TS,
    "data": {
        "bids": [["100", "1", "ord-A"], ["99", "2", "ord-B"]],
        "asks": [["101", "1", "ord-C"]],
    },
}
UPDATE = {
    "type": "l3_update",
    "channel": "l3",
    "symbol": "BTC-USD",
    "seq": 6,
    "epoch": 1,
    "timestamp": TS,
    "data": {
        "events": [
            {
                "op": "fill",
                "order_id": "ord-A",
                "side": "buy",
                "price": "100",
                "size": "1",
                "account_id": "acct-7",
                "trade_id": "t1",
            },
        ]
    },
}
TRADE: dict[str, Any] = {
    "type": "trade",
    "channel": "trades",
    "symbol": "BTC-USD",
    "seq": 9,
    "epoch": 1,
    "timestamp": TS,
    "data": {
        "trade_id": "t1",
        "price": "100",
        "size": "1",
        "side": "sell",
        "time": TS,
        "maker_order_id": "ord-A",
        "taker_order_id": "ord-Z",
        "meta": {"user_id": "u-1", "profile_id": "p-1"},
    },
}


def test_pseudonyms_are_stable_per_day_and_unlinkable_across_days() -> None:
    a = Anonymizer(SECRET, "pseudonym")
    p = a.pseudonym("ord-A", "2026-12-06")
    assert p == a.pseudonym("ord-A", "2026-12-06") and p.startswith("o_") and "ord" not in p
    assert p != a.pseudonym("ord-A", "2026-12-07")
    assert p != a.pseudonym("ord-B", "2026-12-06")
    assert p != Anonymizer(b"another-secret-of-16+", "pseudonym").pseudonym("ord-A", "2026-12-06")


def test_pseudonym_policy_keeps_l3_and_trades_joinable_within_the_day() -> None:
    a = Anonymizer(SECRET, "pseudonym")
    snap, upd, trade = a.message(SNAP), a.message(UPDATE), a.message(TRADE)
    pa = snap["data"]["bids"][0][2]
    assert pa != "ord-A" and upd["data"]["events"][0]["order_id"] == pa
    assert trade["data"]["maker_order_id"] == pa
    assert "ord-" not in orjson.dumps([snap, upd, trade]).decode()
    assert SNAP["data"]["bids"][0][2] == "ord-A"  # the input is not changed


def test_omit_policy_removes_order_ids() -> None:
    a = Anonymizer(b"", "omit")
    assert a.message(SNAP)["data"]["bids"] == [["100", "1"], ["99", "2"]]
    assert "order_id" not in a.message(UPDATE)["data"]["events"][0]
    t = a.message(TRADE)["data"]
    assert "maker_order_id" not in t and "taker_order_id" not in t and t["trade_id"] == "t1"


@pytest.mark.parametrize("policy", ["raw", "pseudonym", "omit"])
def test_account_fields_never_leave(policy: str) -> None:
    a = Anonymizer(SECRET, policy)  # type: ignore[arg-type]
    out = orjson.dumps([a.message(UPDATE), a.message(TRADE)]).decode()
    for secret_field in ("acct-7", "u-1", "p-1", "account_id", "user_id", "profile_id"):
        assert secret_field not in out
    if policy == "raw":
        assert a.message(SNAP) == SNAP and "ord-A" in out


def test_bytes_untouched_when_nothing_to_do() -> None:
    raw = b'{"type":"l2_update","channel":"l2","symbol":"BTC-USD","seq":1,"data":{"changes":[]}}'
    for policy in ("raw", "pseudonym", "omit"):
        assert Anonymizer(SECRET, policy).raw(raw) is raw
    snap = orjson.dumps(SNAP)
    assert Anonymizer(SECRET, "raw").raw(snap) is snap


def test_rest_body_of_an_l3_book_and_trades() -> None:
    book = orjson.dumps({"symbol": "BTC-USD", "timestamp": TS, **SNAP["data"]})
    out = orjson.loads(Anonymizer(b"", "omit").body(book))
    assert out["bids"] == [["100", "1"], ["99", "2"]] and out["symbol"] == "BTC-USD"
    trades = orjson.dumps({"symbol": "BTC-USD", "trades": [TRADE["data"]]})
    t = orjson.loads(Anonymizer(SECRET, "pseudonym").body(trades))["trades"][0]
    assert t["maker_order_id"].startswith("o_") and "meta" in t and "user_id" not in t["meta"]


def test_settings() -> None:
    assert parse_tier_policies("pro=pseudonym, internal=raw") == {
        "pro": "pseudonym",
        "internal": "raw",
        "*": "omit",
    }
    with pytest.raises(ConfigError):
        parse_tier_policies("pro=hash")
    with pytest.raises(ConfigError):
        Anonymizer(b"short", "pseudonym")  # a guessable secret makes pseudonyms reversible
    dev = rest_anonymizers(Settings.from_env({}))
    assert for_tier(dev, "anonymous").policy == "raw"  # development default: unchanged data
    prod = rest_anonymizers(Settings.from_env({"MD_ANON_SECRET": SECRET.decode()}))
    assert [for_tier(prod, t).policy for t in ("anonymous", "basic", "pro", "internal")] == [
        "omit",
        "omit",
        "pseudonym",
        "raw",
    ]
    one = ws_anonymizer(Settings.from_env({"MD_WS_ORDER_IDS": "omit"}))
    assert one.policy == "omit" and one.tiers is None  # one policy: the follower applies it


def test_ws_policies_per_tier_as_rest() -> None:
    env = {"MD_ANON_SECRET": SECRET.decode()}
    assert ws_policies(Settings.from_env(env)) == {
        "internal": "raw",
        "pro": "pseudonym",
        "*": "omit",
    }
    assert ws_policies(Settings.from_env({})) == {"*": "raw"}
    assert ws_policies(Settings.from_env({**env, "MD_WS_ORDER_IDS": "pseudonym"})) == {
        "*": "pseudonym"
    }
    mixed = ws_anonymizer(Settings.from_env({**env, "MD_WS_ORDER_IDS": "vip=raw,*=pseudonym"}))
    assert mixed.policy == "raw" and mixed.tiers is not None  # ids kept until delivery
    assert mixed.tiers.for_tier("vip") is None  # the base policy: nothing to do per client
    view = mixed.tiers.for_tier("basic")
    assert view is not None and view.anonymizer.policy == "pseudonym"
    assert mixed.tiers.for_tier("anonymous") is view  # one copy per policy, shared by tiers
    with pytest.raises(ConfigError) as ei:
        ws_policies(Settings.from_env({"MD_WS_ORDER_IDS": "pro=hidden"}))
    assert ei.value.key == "MD_WS_ORDER_IDS"


def test_view_copies_once_per_message_and_resigns(tmp_path: Any) -> None:
    from core import signing
    from core.signing import Signer, Verifier, write_keypair

    signer = Signer.from_pem(write_keypair(str(tmp_path))[0].read_bytes())
    signing.install(signer)
    try:
        a = ws_anonymizer(Settings.from_env({"MD_ANON_SECRET": SECRET.decode()}))
        assert a.tiers is not None
        view = a.tiers.for_tier("anonymous")
        assert view is not None
        raw = signing.sign(orjson.dumps(UPDATE))
        hit = view.variant(raw)
        assert hit is not None and view.variant(raw) is hit  # made once, then shared
        assert Verifier([signer.public_key]).verify(hit[0]) is None  # the copy is re-signed
        assert b"ord-" not in hit[0] and b"order_id" not in hit[0]
        l2 = signing.sign(b'{"type":"l2_update","channel":"l2","seq":1,"data":{"changes":[]}}')
        assert view.variant(l2) is None  # nothing to change: the base bytes go out
    finally:
        signing.install(None)


@pytest.fixture
def installed() -> Iterator[Anonymizer]:
    a = Anonymizer(SECRET, "pseudonym")
    anonymize.install(a)
    try:
        yield a
    finally:
        anonymize.install(None)


def test_the_gateways_follower_anonymizes_what_it_hands_out(installed: Anonymizer) -> None:
    m = _parse(orjson.dumps(UPDATE))
    ev = orjson.loads(m.raw)["data"]["events"][0]
    assert ev["order_id"] == installed.pseudonym("ord-A", "2026-12-06") and "account_id" not in ev
    assert m.parsed["data"]["events"][0]["order_id"] == ev["order_id"]  # parsed agrees


def test_view_cache_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    a = ws_anonymizer(Settings.from_env({"MD_ANON_SECRET": SECRET.decode()}))
    assert a.tiers is not None
    view = a.tiers.for_tier("anonymous")
    assert view is not None
    monkeypatch.setattr(anonymize, "VIEW_CACHE_BYTES", 1000)
    msgs = [orjson.dumps({**UPDATE, "seq": i}) for i in range(10)]
    for m in msgs:
        view.variant(m)
    assert view.cached_bytes < 1000 + len(msgs[0]) and len(view.cache) < len(msgs)
