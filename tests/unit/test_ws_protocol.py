"""The gateway's pure client protocol (gateway_ws.protocol.Session): no sockets, explicit clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.codec import ns_from_iso
from gateway_ws.protocol import (
    Authenticated,
    Close,
    Principal,
    ProtocolError,
    Session,
    SubRequest,
    Subscribe,
    Tier,
    Unsubscribe,
    parse_interval,
)

ANON = Principal(None, Tier("anonymous", max_subscriptions=3, rate=10, burst=5))


def session(**kw: Any) -> Session:
    opts: dict[str, Any] = dict(
        principal=ANON, is_symbol=lambda s: s in {"BTC-USD", "ETH-USD"}, ns_from_iso=ns_from_iso
    )
    opts.update(kw)
    return Session(**opts)


def feed(s: Session, msg: Any, now: float = 0.0) -> list[dict[str, Any]]:
    s.receive_data(msg if isinstance(msg, str) else orjson.dumps(msg).decode(), now)
    return [orjson.loads(b) for b in s.data_to_send()]


def test_subscribe_single_form_acks_and_emits_event() -> None:
    s = session()
    out = feed(s, {"type": "subscribe", "channel": "l2", "symbol": "btc/usd", "id": "a"})
    assert out == [
        {
            "type": "subscribed",
            "changed": ["l2:BTC-USD"],
            "subscriptions": ["l2:BTC-USD"],
            "id": "a",
        }
    ]
    assert s.events_received() == [Subscribe((SubRequest("l2", "BTC-USD"),))]
    assert s.events_received() == []


def test_subscribe_list_form_with_partial_failure() -> None:
    s = session()
    out = feed(
        s,
        {
            "type": "subscribe",
            "channels": ["l2:BTC-USD", "nope:BTC-USD", "trades:XRP-USD", "ticker:ETH-USD"],
        },
    )
    codes = [m.get("code") for m in out if m["type"] == "error"]
    assert codes == ["unknown_channel", "unknown_symbol"]
    ack = [m for m in out if m["type"] == "subscribed"][0]
    assert ack["changed"] == ["l2:BTC-USD", "ticker:ETH-USD"]
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe) and [r.name for r in ev.requests] == [
        "l2:BTC-USD",
        "ticker:ETH-USD",
    ]


def test_unsubscribe_mirrors_subscribe() -> None:
    s = session()
    feed(s, {"type": "subscribe", "channels": ["l2:BTC-USD", "trades:BTC-USD"]})
    s.events_received()
    out = feed(s, {"type": "unsubscribe", "channel": "l2", "symbol": "BTC-USD"})
    assert out == [
        {"type": "unsubscribed", "changed": ["l2:BTC-USD"], "subscriptions": ["trades:BTC-USD"]}
    ]
    assert s.events_received() == [Unsubscribe((("l2", "BTC-USD"),))]
    out = feed(s, {"type": "unsubscribe", "channel": "l2", "symbol": "BTC-USD"})
    assert out[0]["code"] == "not_subscribed"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", "bad_json"),
        ("[]", "bad_request"),
        ('{"type":"x"}', "unknown_type"),
        ('{"type":"subscribe"}', "bad_request"),
        ('{"type":"subscribe","channel":"l2"}', "bad_request"),
        ('{"type":"subscribe","channels":[]}', "bad_request"),
        ('{"type":"subscribe","channel":"l2","symbol":"BTCUSD"}', "unknown_symbol"),
        ('{"type":"subscribe","channel":"l2","symbol":"BTC-USD","since_seq":-1}', "bad_request"),
        (
            '{"type":"subscribe","channel":"l2","symbol":"BTC-USD","since":"yesterday"}',
            "bad_request",
        ),
        ('{"type":"subscribe","channel":"l2","symbol":"BTC-USD","depth":0}', "bad_request"),
        ('{"type":"subscribe","channel":"l3","symbol":"BTC-USD","depth":10}', "bad_request"),
        (
            '{"type":"subscribe","channel":"trades","symbol":"BTC-USD","interval":"5s"}',
            "bad_request",
        ),
        (
            '{"type":"subscribe","channel":"ticker","symbol":"BTC-USD","interval":"5 parsecs"}',
            "bad_request",
        ),
        (
            '{"type":"subscribe","channel":"l2","symbol":"BTC-USD","currencies":["EUR"]}',
            "bad_request",
        ),
        (
            '{"type":"subscribe","channel":"l2","symbol":"BTC-USD","since_seq":1,"interval":"1s"}',
            "bad_request",
        ),
        ('{"type":"auth","token":"x"}', "auth_unavailable"),
    ],
)
def test_bad_requests_are_errors_and_nothing_changes(raw: str, code: str) -> None:
    s = session()
    out = feed(s, raw)
    assert [m["code"] for m in out] == [code]
    assert out[0]["type"] == "error" and out[0]["message"]
    assert s.subscriptions == {} and s.events_received() == [] and s.closing is None


def test_options_are_parsed() -> None:
    s = session()
    feed(
        s,
        {
            "type": "subscribe",
            "channel": "ticker",
            "symbol": "BTC-USD",
            "interval": "250ms",
            "currencies": ["eur", "EUR", "gbp"],
        },
    )
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe)
    r = ev.requests[0]
    assert r.interval_ms == 250 and r.currencies == ("EUR", "GBP")
    feed(
        s,
        {
            "type": "subscribe",
            "channel": "l2",
            "symbol": "ETH-USD",
            "since_seq": 41,
            "epoch": 7,
            "depth": 10,
        },
    )
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe)
    assert ev.requests[0] == SubRequest("l2", "ETH-USD", since_seq=41, epoch=7, depth=10)
    feed(
        s,
        {
            "type": "subscribe",
            "channel": "trades",
            "symbol": "ETH-USD",
            "since": "2026-11-24T06:51:12.123456Z",
        },
    )
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe) and ev.requests[0].since_ns == ns_from_iso(
        "2026-11-24T06:51:12.123456Z"
    )


def test_status_channel_without_symbol_means_all() -> None:
    s = session()
    out = feed(s, {"type": "subscribe", "channel": "status"})
    assert out[0]["subscriptions"] == ["status:*"]


def test_subscription_limit_of_the_tier() -> None:
    s = session()
    out = feed(
        s,
        {
            "type": "subscribe",
            "channels": ["l2:BTC-USD", "l3:BTC-USD", "trades:BTC-USD", "ticker:BTC-USD"],
        },
    )
    assert [m.get("code") for m in out] == ["too_many_subscriptions", None]
    assert len(s.subscriptions) == 3
    # re-subscribing an active target does not count twice
    out = feed(s, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "depth": 5}, now=1)
    assert out[0]["type"] == "subscribed"


def test_oversized_frame_is_refused_without_parsing() -> None:
    s = session()
    out = feed(s, '{"type":"ping","pad":"' + "x" * 20000 + '"}')
    assert out[0]["code"] == "frame_too_large" and "16384" in out[0]["message"]


def test_rate_limit_then_recovery() -> None:
    s = session()
    codes = [feed(s, {"type": "ping"}, now=0.0)[0]["type"] for _ in range(7)]
    assert codes == ["pong"] * 5 + ["error"] * 2
    assert feed(s, {"type": "ping"}, now=0.5)[0]["type"] == "pong"  # 10/s refills 5 tokens


def test_repeated_violations_close_with_1008_and_discard_input() -> None:
    s = session()
    for i in range(10):
        feed(s, "{", now=float(i))
    assert s.closing == Close(1008, "too many invalid requests")
    assert s.events_received() == [s.closing]
    assert feed(s, {"type": "ping"}, now=11.0) == []


def test_violations_expire_outside_the_window() -> None:
    s = session()
    for i in range(30):
        feed(s, "{", now=i * 10.0)  # one every 10 s: at most 6 inside a 60 s window
    assert s.closing is None


def test_auth_switches_tier_and_channels() -> None:
    pro = Tier("pro", max_subscriptions=100)
    restricted = Principal(None, Tier("anonymous", channels=frozenset({"ticker"})))

    def verify(token: str) -> Principal:
        if token != "good":
            raise ProtocolError("auth_failed", "invalid token: signature")
        return Principal("alice", pro)

    s = session(principal=restricted, verify_token=verify)
    out = feed(s, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
    assert out[0]["code"] == "auth_required"
    out = feed(s, {"type": "auth", "token": "bad"})
    assert out[0]["code"] == "auth_failed"
    out = feed(s, {"type": "auth", "token": "good", "id": 1})
    assert out == [{"type": "authenticated", "user": "alice", "tier": "pro", "id": 1}]
    assert s.events_received() == [Authenticated(Principal("alice", pro), restricted)]
    out = feed(s, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
    assert out[0]["type"] == "subscribed"


def test_parse_interval() -> None:
    assert parse_interval("5s") == 5000
    assert parse_interval("250ms") == 250
    assert parse_interval("1m") == 60000
    assert parse_interval(2) == 2000
    for bad in ("", "5", "5h", True, None):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_duplicate_targets_of_one_subscribe_collapse_to_one() -> None:
    """Issue 12: 200 copies of one target with since_seq started 200 replays."""
    s = session(principal=Principal(None, Tier("anonymous", max_subscriptions=50)))
    targets = ["trades:BTC-USD"] * 200 + ["trades:btc/usd", "l2:ETH-USD", "trades:BTC-USD"]
    out = feed(s, {"type": "subscribe", "channels": targets, "since_seq": 5})
    assert out == [
        {
            "type": "subscribed",
            "changed": ["trades:BTC-USD", "l2:ETH-USD"],
            "subscriptions": ["trades:BTC-USD", "l2:ETH-USD"],
        }
    ]
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe)
    assert [r.name for r in ev.requests] == ["trades:BTC-USD", "l2:ETH-USD"]
    assert all(r.since_seq == 5 for r in ev.requests)


def test_auth_does_not_refill_the_rate_limit_bucket() -> None:
    """Issue 12: each auth message used to reset the bucket to a full burst."""
    tier = Tier("anonymous", rate=1, burst=3)
    s = session(principal=Principal(None, tier), verify_token=lambda t: Principal("u", tier))
    codes = []
    for _ in range(6):  # all at the same instant: 3 pass, the rest are rate-limited
        out = feed(s, {"type": "auth", "token": "t"})
        codes.append(out[0].get("code", out[0]["type"]))
    assert codes == ["authenticated"] * 3 + ["rate_limited"] * 3


def test_auth_bucket_capped_at_the_new_tiers_burst() -> None:
    big = Tier("anonymous", rate=1, burst=10)
    small = Tier("basic", rate=1, burst=2)
    s = session(principal=Principal(None, big), verify_token=lambda t: Principal("u", small))
    assert feed(s, {"type": "auth", "token": "t"})[0]["type"] == "authenticated"
    assert [feed(s, {"type": "ping"})[0]["type"] for _ in range(3)] == [
        "pong",
        "pong",
        "error",
    ]


def test_refused_auth_is_reverted_by_the_transport() -> None:
    pro = Tier("pro")
    s = session(verify_token=lambda t: Principal("alice", pro))
    feed(s, {"type": "auth", "token": "t"})
    (ev,) = s.events_received()
    assert isinstance(ev, Authenticated) and ev.previous == ANON
    s.revert_auth(ev)
    assert s.principal == ANON
