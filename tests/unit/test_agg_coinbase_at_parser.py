"""The Advanced Trade parser without sockets, its JWT credentials, and the feed monitor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import events as ev
from aggregator.sources.coinbase_at import AdvancedTradeParser
from aggregator.sources.coinbase_auth import (
    CdpCredentials,
    CredentialsError,
    generate_test_credentials,
    verify_websocket_jwt,
)
from aggregator.sources.feed_monitor import FeedMonitor, RawCapture, read_raw_capture

NS = 1_700_000_000_000_000_000
P = "BTC-USD"


class Msgs:
    """Advanced Trade envelopes with a running sequence_num, as one connection sends them."""

    def __init__(self) -> None:
        self.seq = 0

    def env(self, channel: str, events: list[dict[str, Any]], seq: int | None = None) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        return orjson.dumps(
            {
                "channel": channel,
                "client_id": "",
                "timestamp": "2023-02-09T20:32:50.714964855Z",
                "sequence_num": seq,
                "events": events,
            }
        )

    def l2(self, kind: str, levels: list[tuple[str, str, str]], product: str = P) -> bytes:
        ups = [
            {"side": s, "event_time": "2023-02-09T20:32:50Z", "price_level": p, "new_quantity": q}
            for s, p, q in levels
        ]
        return self.env("l2_data", [{"type": kind, "product_id": product, "updates": ups}])

    def trades(self, rows: list[tuple[str, str]], kind: str = "update") -> bytes:
        ts = [
            {
                "trade_id": tid,
                "product_id": P,
                "price": "100.5",
                "size": "0.1",
                "side": side,
                "time": "2023-02-09T20:32:51.000001Z",
            }
            for tid, side in rows
        ]
        return self.env("market_trades", [{"type": kind, "trades": ts}])


def parser() -> AdvancedTradeParser:
    return AdvancedTradeParser([P, "ETH-USD"])


def synced(p: AdvancedTradeParser, m: Msgs) -> None:
    out = p.receive(m.l2("snapshot", [("bid", "100", "1"), ("offer", "101", "2")]), NS)
    assert isinstance(out[0], ev.BookSnapshot)


def test_snapshot_and_updates_become_book_events() -> None:
    p, m = parser(), Msgs()
    out = p.receive(
        m.l2("snapshot", [("bid", "100", "1"), ("bid", "99", "0"), ("offer", "101", "2")]), NS
    )
    (snap,) = out
    assert isinstance(snap, ev.BookSnapshot) and snap.symbol == P and snap.source == "coinbase_at"
    assert [(b[0], b[2]) for b in snap.bids] == [("100", "1")]  # zero levels left out
    assert [(a[0], a[2]) for a in snap.asks] == [("101", "2")]
    assert snap.ts == 1675974770714964000  # the envelope's timestamp (nanoseconds truncated)
    (upd,) = p.receive(m.l2("update", [("bid", "100", "0"), ("offer", "102", "3")]), NS)
    assert isinstance(upd, ev.BookUpdate)
    assert [(c[0], c[1], c[3]) for c in upd.changes] == [("buy", "100", "0"), ("sell", "102", "3")]
    assert p.last_products == (P,)


def test_update_before_snapshot_is_dropped() -> None:
    p, m = parser(), Msgs()
    assert p.receive(m.l2("update", [("bid", "100", "1")]), NS) == []
    assert p.counts["stale"] == 1


def test_sequence_gap_resyncs_every_book_until_new_snapshots() -> None:
    p, m = parser(), Msgs()
    synced(p, m)
    m.seq += 1  # one message lost
    assert p.receive(m.l2("update", [("bid", "100", "5")]), NS) == []
    assert p.counts["gaps"] == 1 and p.take_resync() is True and p.take_resync() is False
    assert not p.synced(P) and not p.synced("ETH-USD")
    synced(p, m)  # the resubscription's snapshot
    assert len(p.receive(m.l2("update", [("bid", "100", "5")]), NS)) == 1


def test_repeated_sequence_num_is_dropped_whole() -> None:
    p, m = parser(), Msgs()
    synced(p, m)
    assert p.receive(m.l2("update", [("bid", "100", "5")], product=P), NS)
    again = m.env("l2_data", [], seq=m.seq - 1)
    assert p.receive(again, NS) == [] and p.counts["stale"] == 1 and p.counts["gaps"] == 0


def test_new_connection_restarts_sequence_and_needs_snapshots() -> None:
    p, m = parser(), Msgs()
    synced(p, m)
    p.on_connect()
    assert not p.synced(P)
    synced(p, Msgs())  # sequence_num from 0 again: no gap
    assert p.counts["gaps"] == 0


def trades(out: list[ev.AnyEvent]) -> list[ev.Trade]:
    """``out`` as trades; any other event fails the test."""
    assert all(isinstance(t, ev.Trade) for t in out), out
    return [t for t in out if isinstance(t, ev.Trade)]


def test_trades_taker_side_order_and_dedupe() -> None:
    p, m = parser(), Msgs()
    out = trades(p.receive(m.trades([("12", "BUY"), ("11", "SELL")], kind="snapshot"), NS))
    assert [(t.trade_id, t.taker_side) for t in out] == [("11", "buy"), ("12", "sell")]
    assert out[0].ts == 1675974771000001000
    again = trades(p.receive(m.trades([("12", "BUY"), ("13", "SELL")]), NS))  # reconnect's snapshot
    assert [t.trade_id for t in again] == ["13"]
    assert p.counts["stale"] == 1


def test_bad_trade_drops_the_whole_message_and_keeps_state() -> None:
    p, m = parser(), Msgs()
    assert p.receive(m.trades([("5", "BUY"), ("6", "UP")]), NS) == []
    assert p.counts["malformed"] == 1
    assert [t.trade_id for t in trades(p.receive(m.trades([("5", "BUY")]), NS))] == ["5"]


def test_malformed_level_resyncs_books() -> None:
    p, m = parser(), Msgs()
    synced(p, m)
    assert p.receive(m.l2("update", [("bid", "abc", "1")]), NS) == []
    assert p.counts["malformed"] == 1 and p.resync and not p.synced(P)


def test_ticker_and_candles_are_kept_not_published() -> None:
    p, m = parser(), Msgs()
    tk = {"type": "ticker", "product_id": P, "price": "100.1", "best_bid": "100", "best_ask": "101"}
    assert p.receive(m.env("ticker", [{"type": "snapshot", "tickers": [tk]}]), NS) == []
    assert p.tickers[P]["best_ask"] == "101"
    c = {"start": "1688998200", "open": "1", "high": "2", "low": "1", "close": "2", "volume": "3"}
    c["product_id"] = P
    assert p.receive(m.env("candles", [{"type": "update", "candles": [c]}]), NS) == []
    assert p.candles[P]["close"] == "2" and p.last_products == (P,)
    bad = dict(c, start="noon")
    assert p.receive(m.env("candles", [{"type": "update", "candles": [bad]}]), NS) == []
    assert p.counts["malformed"] == 1 and p.candles[P]["start"] == "1688998200"


def test_heartbeat_counter_gap_is_counted() -> None:
    p, m = parser(), Msgs()
    for n in (7, 8, 10):
        hb = [{"current_time": "2023-06-23 20:31:56 +0000 UTC", "heartbeat_counter": n}]
        p.receive(m.env("heartbeats", hb), NS)
    assert p.counts["heartbeat_gaps"] == 1 and p.counts["gaps"] == 0


def test_error_message_is_kept_and_unknown_products_ignored() -> None:
    p, m = parser(), Msgs()
    assert p.receive(b'{"type":"error","message":"authentication failure"}', NS) == []
    assert p.errors == ["authentication failure"]
    assert p.receive(m.l2("snapshot", [("bid", "1", "1")], product="DOGE-USD"), NS) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: (
                st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5)
            ),
            max_leaves=20,
        ).map(lambda x: json.dumps(x).encode()),
        st.fixed_dictionaries(
            {
                "channel": st.sampled_from(["l2_data", "market_trades", "ticker", "candles"]),
                "sequence_num": st.integers(-(2**63), 2**63 - 1),
                "events": st.lists(st.dictionaries(st.text(max_size=10), st.text(max_size=6))),
            }
        ).map(orjson.dumps),
    )
)
def test_any_input_never_raises(raw: bytes) -> None:
    p = parser()
    out = p.receive(raw, NS)
    assert all(isinstance(e, ev.Event) for e in out)


# ------------------------------------------------------------------ credentials


def test_jwt_is_es256_fresh_and_verifiable(tmp_path: Path) -> None:
    creds = generate_test_credentials("organizations/o/apiKeys/k")
    a, b = creds.websocket_jwt(now=1000), creds.websocket_jwt(now=1000)
    assert a != b  # a fresh nonce every time
    head = jwt.get_unverified_header(a)
    assert head["alg"] == "ES256" and head["kid"] == creds.name and len(head["nonce"]) == 32
    claims = jwt.decode(a, creds.public_pem(), algorithms=["ES256"], options={"verify_exp": False})
    assert claims == {"iss": "cdp", "sub": creds.name, "nbf": 1000, "exp": 1120}
    assert verify_websocket_jwt(a, creds.public_pem(), creds.name, now=1010) == ""
    assert verify_websocket_jwt(a, creds.public_pem(), creds.name, now=1200) != ""  # expired
    other = generate_test_credentials(creds.name)
    assert verify_websocket_jwt(a, other.public_pem(), creds.name, now=1010) != ""
    assert verify_websocket_jwt("garbage", creds.public_pem(), creds.name) != ""


def test_key_file_round_trip_and_errors_never_show_the_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    creds = generate_test_credentials("organizations/o/apiKeys/k")
    pem = creds._key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    f = tmp_path / "cdp_api_key.json"
    f.write_text(json.dumps({"name": creds.name, "privateKey": pem.decode()}))
    loaded = CdpCredentials.from_key_file(f)
    assert loaded.public_pem() == creds.public_pem()
    assert "PRIVATE" not in repr(loaded) and "redacted" in repr(loaded)
    secret = "-----BEGIN EC PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END EC PRIVATE KEY-----\n"
    f.write_text(json.dumps({"name": creds.name, "privateKey": secret}))
    with pytest.raises(CredentialsError) as exc:
        CdpCredentials.from_key_file(f)
    assert "TOPSECRET" not in str(exc.value) and exc.value.__cause__ is None
    f.write_text("{}")
    with pytest.raises(CredentialsError, match="needs 'name'"):
        CdpCredentials.from_key_file(f)
    with pytest.raises(CredentialsError, match="No such file"):
        CdpCredentials.from_key_file(tmp_path / "missing.json")


# ------------------------------------------------------------------ feed monitor


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_health_grace_then_idle_limit() -> None:
    clock = Clock()
    m = FeedMonitor("t-health", idle_s=60, grace_s=300, clock=clock)
    assert m.healthy()[0]  # start-up grace, nothing received yet
    clock.t += 301
    ok, detail = m.healthy()
    assert not ok and detail["last_message_s"] is None
    m.frame(b"{}", ["BTC-USD"], NS)
    assert m.healthy()[0]
    clock.t += 59
    assert m.healthy()[0]
    clock.t += 2
    ok, detail = m.healthy()
    assert not ok and detail["last_message_s"] == 61


def test_metrics_per_product() -> None:
    from prometheus_client import REGISTRY

    m = FeedMonitor("t-metrics")
    m.frame(b"x", ["BTC-USD", "ETH-USD"], NS)
    m.frame(b"y", ["BTC-USD"], NS + 5_000_000_000)
    m.frame(b"hb", [], NS)
    m.processed(0.0002)

    def val(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"source": "t-metrics", **labels})

    assert val("md_source_messages_total", product="BTC-USD") == 2
    assert val("md_source_messages_total", product="ETH-USD") == 1
    assert val("md_source_messages_total", product="_connection") == 1
    assert val("md_source_last_message_timestamp_seconds", product="BTC-USD") == NS / 1e9 + 5
    assert val("md_source_processing_seconds_count") == 1


def test_raw_capture_per_product(tmp_path: Path) -> None:
    raw = RawCapture(tmp_path, "cb")
    m = FeedMonitor("t-raw", raw=raw)
    m.frame(b'{"a":1}', ["BTC-USD", "ETH-USD"], 1)
    m.frame('{"b":2}', ["BTC-USD"], 2)
    m.frame(b'{"hb":3}', [], 3)
    m.close()
    assert read_raw_capture(tmp_path / "cb-BTC-USD.ndjson") == [(1, '{"a":1}'), (2, '{"b":2}')]
    assert read_raw_capture(tmp_path / "cb-ETH-USD.ndjson") == [(1, '{"a":1}')]
    assert read_raw_capture(tmp_path / "cb-_connection.ndjson") == [(3, '{"hb":3}')]
    only = RawCapture(tmp_path / "only", "cb", ["ETH-USD"])
    only.write(b"x", ["BTC-USD"], 1)
    only.write(b"y", [], 2)
    only.write(b"z", ["ETH-USD"], 3)
    only.close()
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["cb-ETH-USD.ndjson"]


def test_exchange_feed_error_message_does_not_raise() -> None:
    """Regression: the Exchange parser logged ``extra={"message": ...}``, which logging refuses
    (KeyError out of ``receive``) - the first ``error`` from Coinbase crashed the connector."""
    from aggregator.sources.coinbase import CoinbaseParser

    p = CoinbaseParser([P])
    assert p.receive(b'{"type":"error","message":"Failed to subscribe","reason":"x"}', NS) == []


def test_exchange_parser_resyncs_a_product_after_a_bad_book_message() -> None:
    """A level change that cannot be applied leaves the book wrong: resubscribe the product."""
    from aggregator.sources.coinbase import CoinbaseParser

    p = CoinbaseParser([P])
    snap = {"type": "snapshot", "product_id": P, "bids": [["100", "1"]], "asks": [["101", "1"]]}
    assert p.receive(orjson.dumps(snap), NS) and p.synced(P)
    bad = {"type": "l2update", "product_id": P, "changes": [["buy", "abc", "1"]], "time": "x"}
    assert p.receive(orjson.dumps(bad), NS) == []
    assert not p.synced(P) and p.take_resync() == {P}
    odd = dict(bad, product_id="not a symbol!")
    assert p.receive(orjson.dumps(odd), NS) == [] and p.counts["malformed"] == 2


def test_exchange_parser_counts_trades_lost_across_a_reconnect() -> None:
    """After a reconnect the subscription's ``last_match`` may be ahead of the last trade seen:
    the trades between are gone (the feed cannot replay them) and are counted, not hidden."""
    from aggregator.sources.coinbase import CoinbaseParser

    def m(kind: str, tid: int) -> bytes:
        return orjson.dumps(
            {"type": kind, "trade_id": tid, "maker_order_id": "a", "taker_order_id": "b",
             "side": "buy", "size": "1", "price": "1", "product_id": P, "sequence": tid,
             "time": "2021-04-17T16:43:37.075687Z"}
        )  # fmt: skip

    p = CoinbaseParser([P])
    assert len(p.receive(m("last_match", 10), NS)) == 1
    p.on_connect()
    assert len(p.receive(m("last_match", 14), NS)) == 1
    assert p.counts["lost_trades"] == 3 and p.counts["gaps"] == 0
    assert len(p.receive(m("match", 15), NS)) == 1 and p.counts["gaps"] == 0
