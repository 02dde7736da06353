"""Resume by client_id, the pure parts: the session's ``client_id``/``resume`` rules, ``since`` in
Unix seconds, and the stored set's encoding (gateway_ws/protocol.py, gateway_ws/client_ids.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.codec import ns_from_iso
from gateway_ws.client_ids import check_client_id, decode_set, encode_set, owner_of
from gateway_ws.protocol import (
    Bind,
    Principal,
    ResumeClient,
    Session,
    SubRequest,
    Subscribe,
    Tier,
    parse_since,
)

ANON = Principal(None, Tier("anonymous", max_subscriptions=3, rate=100, burst=100))
T = 1_796_559_600  # 2026-12-06T12:20:00Z


def session(**kw: Any) -> Session:
    opts: dict[str, Any] = dict(
        principal=ANON, is_symbol=lambda s: s in {"BTC-USD", "ETH-USD"}, ns_from_iso=ns_from_iso
    )
    opts.update(kw)
    return Session(**opts)


def feed(s: Session, msg: Any) -> list[dict[str, Any]]:
    s.receive_data(orjson.dumps(msg), 0.0)
    return [orjson.loads(b) for b in s.data_to_send()]


@pytest.mark.parametrize(
    ("raw", "ns"),
    [
        (T, T * 10**9),
        (T + 0.5, (T * 10**9) + 500_000_000),
        (str(T), T * 10**9),
        (f"{T}.000001", T * 10**9 + 1000),
        ("2026-12-06T12:20:00Z", T * 10**9),
        ("2026-12-06T12:20:00.000001+00:00", T * 10**9 + 1000),
    ],
)
def test_since_is_iso_8601_or_unix_seconds(raw: object, ns: int) -> None:
    assert parse_since(raw, ns_from_iso) == ns


@pytest.mark.parametrize("raw", [True, None, [T], -1, T * 1000, float("nan"), "yesterday", ""])
def test_since_refuses_what_is_neither(raw: object) -> None:
    with pytest.raises(ValueError, match="since"):
        parse_since(raw, ns_from_iso)


def test_subscribe_since_in_unix_seconds_resumes_from_that_time() -> None:
    s = session()
    feed(s, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "since": T})
    (ev,) = s.events_received()
    assert isinstance(ev, Subscribe) and ev.requests[0].since_ns == T * 10**9
    out = feed(s, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "since": T * 1000})
    assert out[0]["code"] == "bad_request" and "milliseconds" in out[0]["message"]


def test_client_id_binds_once_and_bad_ids_are_refused() -> None:
    s = session()
    out = feed(s, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "client_id": "a b"})
    assert out[0]["code"] == "bad_request" and "client_id" in out[0]["message"]
    assert s.client_id is None and not s.subscriptions
    feed(s, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "client_id": "desk-7"})
    assert s.client_id == "desk-7"
    assert isinstance(s.events_received()[0], Bind)
    out = feed(s, {"type": "subscribe", "channel": "ticker", "symbol": "BTC-USD", "client_id": "x"})
    assert out[0]["code"] == "client_id_conflict"
    assert ("ticker", "BTC-USD") not in s.subscriptions


def test_resume_needs_a_client_id_and_a_since() -> None:
    s = session()
    assert feed(s, {"type": "resume", "since": T})[0]["code"] == "bad_request"
    out = feed(s, {"type": "resume", "client_id": "c1"})
    assert out[0]["code"] == "bad_request" and "since" in out[0]["message"]
    assert feed(s, {"type": "resume", "client_id": "c1", "since": "soon"})[0]["code"] == (
        "bad_request"
    )
    assert s.client_id is None and s.events_received() == []  # a refused resume binds nothing
    assert feed(s, {"type": "resume", "client_id": "c1", "since": T, "id": 4}) == []
    assert s.events_received() == [Bind("c1"), ResumeClient("c1", T * 10**9, 4)]
    assert feed(s, {"type": "resume", "since": T}) == []  # bound: the id may be left out
    assert s.events_received() == [ResumeClient("c1", T * 10**9)]


def test_resume_with_resubscribes_the_stored_set_from_since() -> None:
    s = session(client_id="c1")
    ev = ResumeClient("c1", T * 10**9, "r")
    stored: list[dict[str, Any]] = [
        {"channel": "l2", "symbol": "BTC-USD", "depth": 10},
        {"channel": "ticker", "symbol": "ETH-USD", "interval_ms": 1000},
        {"channel": "status", "symbol": "*"},
    ]
    s.resume_with(ev, stored, {("l2", "BTC-USD"): "2026-12-06T12:25:00.000000Z"})
    (ack,) = [orjson.loads(b) for b in s.data_to_send()]
    assert ack == {
        "type": "resumed",
        "client_id": "c1",
        "since": "2026-12-06T12:20:00.000000Z",
        "changed": ["l2:BTC-USD", "ticker:ETH-USD", "status:*"],
        "subscriptions": ["l2:BTC-USD", "ticker:ETH-USD", "status:*"],
        "beyond_window": [{"target": "l2:BTC-USD", "window_start": "2026-12-06T12:25:00.000000Z"}],
        "id": "r",
    }
    (sub,) = s.events_received()
    assert isinstance(sub, Subscribe)
    l2, ticker, status = sub.requests
    assert l2 == SubRequest("l2", "BTC-USD", since_ns=T * 10**9, depth=10)
    # a conflated stream sends the latest value: nothing to replay, no since
    assert ticker == SubRequest("ticker", "ETH-USD", interval_ms=1000)
    assert status == SubRequest("status", "*")
    # and the set it would store now is the one it was resumed from
    assert s.stored_targets() == stored


def test_resume_with_checks_every_stored_target_again() -> None:
    s = session(client_id="c1", principal=Principal(None, Tier("t", channels=frozenset({"l2"}))))
    stored: list[dict[str, Any]] = [
        {"channel": "l2", "symbol": "BTC-USD", "depth": 5000},  # over the depth limit
        {"channel": "l3", "symbol": "BTC-USD"},  # not in this tier
        {"channel": "l2", "symbol": "DOGE-EUR"},  # not a symbol here
        {"channel": "l2", "symbol": "ETH-USD"},
    ]
    s.resume_with(ResumeClient("c1", T * 10**9), stored)
    out = [orjson.loads(b) for b in s.data_to_send()]
    assert [(o["type"], o.get("code"), o.get("target")) for o in out] == [
        ("error", "bad_request", "l2:BTC-USD"),
        ("error", "auth_required", "l3:BTC-USD"),
        ("error", "unknown_symbol", "l2:DOGE-EUR"),
        ("resumed", None, None),
    ]
    assert out[-1]["subscriptions"] == ["l2:ETH-USD"]


def test_resume_of_an_unknown_client_id_is_a_clear_error() -> None:
    s = session(client_id="gone")
    s.resume_with(ResumeClient("gone", T * 10**9, 1), None)
    (err,) = [orjson.loads(b) for b in s.data_to_send()]
    assert err["code"] == "unknown_client_id" and "'gone'" in err["message"]
    assert s.events_received() == []


def test_stored_set_round_trips_and_garbage_from_redis_is_dropped() -> None:
    subs = [{"channel": "ticker", "symbol": "BTC-USD", "currencies": ["EUR"]}]
    assert decode_set(encode_set(subs)) == subs
    assert decode_set(b"not json") == []
    assert decode_set(b'{"subs": 3}') == []
    raw = orjson.dumps({"subs": [{"channel": 1}, "x", {"channel": "l2", "symbol": "B", "z": 1}]})
    assert decode_set(raw) == [{"channel": "l2", "symbol": "B"}]


def test_client_ids_and_owners() -> None:
    assert check_client_id("desk-7:a_b.c") == "desk-7:a_b.c"
    for bad in ("", "x" * 65, "a/b", 7, None):
        with pytest.raises(ValueError):
            check_client_id(bad)
    assert owner_of(None) == "anon"
    assert owner_of("alice") != owner_of("bob") and "alice" not in owner_of("alice")
