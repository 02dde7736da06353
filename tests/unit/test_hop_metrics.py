"""Hop latency: the gateways' cached timestamp parser, and loadtests/bench_e2e.py's pure parts
(timestamps in received bytes, stream continuity, percentiles from histogram bucket deltas)."""

from __future__ import annotations

from types import ModuleType

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

import core.isotime
from core.channels import data_message
from core.codec import iso_from_ns, ns_from_iso
from core.errors import CodecError
from core.messages import MessageType
from gateway_ws.metrics import HOP_BUCKETS
from loadtests import bench_e2e as b

PARSERS = [core.isotime]
T0 = ns_from_iso("2026-11-24T06:51:12.123456Z")
# 2000-01-01 .. 2099-12-31, µs resolution as the platform prints it
NS = st.integers(946_684_800_000_000, 4_102_444_799_999_999).map(lambda us: us * 1000)


# ------------------------------------------------------------------ gateways' parser


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
@given(ns=NS)
def test_cached_parser_agrees_with_the_full_one(mod: ModuleType, ns: int) -> None:
    text = iso_from_ns(ns)
    assert mod.ns_from_iso_cached(text) == ns == ns_from_iso(text)
    assert mod.ns_from_iso_cached(text) == ns  # second call: from the cache


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T06:51:59.999999Z",  # last µs of a minute
        "2026-11-24T06:52:00.000000Z",
        "2026-12-31T23:59:59.999999Z",  # year end
        "2027-01-01T00:00:00.000000Z",
        "2028-02-29T12:00:00.000001Z",  # leap day
    ],
)
def test_cached_parser_at_boundaries(mod: ModuleType, text: str) -> None:
    assert mod.ns_from_iso_cached(text) == ns_from_iso(text)


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
def test_same_second_different_micros_share_the_prefix_not_the_value(mod: ModuleType) -> None:
    a = mod.ns_from_iso_cached("2026-11-24T06:51:12.000001Z")
    z = mod.ns_from_iso_cached("2026-11-24T06:51:12.999999Z")
    assert z - a == 999_998_000


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T06:51:12+00:00",  # other shapes take the full parser
        "2026-11-24T06:51:12.123456+00:00",
        "2026-11-24T06:51:12Z",
        "2026-11-24T08:51:12.123456+02:00",
        "2026-11-24T06:51:12,123456Z",  # ISO 8601 allows the comma
    ],
)
def test_other_iso_shapes_fall_back_to_the_full_parser(mod: ModuleType, text: str) -> None:
    assert mod.ns_from_iso_cached(text) == ns_from_iso(text)


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-11-24T06:51:12.12x456Z",
        "2026-13-24T06:51:12.123456Z",
        "2026-11-24T06:51:12.123456X",
    ],
)
def test_garbage_raises_codec_error(mod: ModuleType, text: str) -> None:
    mod.ns_from_iso_cached("2026-11-24T06:51:12.000000Z")  # the prefix is cached: no shortcut
    with pytest.raises(CodecError):
        mod.ns_from_iso_cached(text)


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__)
def test_cache_is_bounded(mod: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mod, "MAX_SECONDS", 3)
    monkeypatch.setattr(mod, "_seconds", {})
    for i in range(10):
        ns = T0 + i * 1_000_000_000
        assert mod.ns_from_iso_cached(iso_from_ns(ns)) == ns
        assert len(mod._seconds) <= 3


# ------------------------------------------------------------------ bench: bytes and streams


def msg(
    seq: int,
    pub: int = T0,
    ev: int = T0,
    *,
    type: MessageType = "l2_update",
    channel: str = "l2",
    epoch: int = 7,
    **extra: object,
) -> bytes:
    """A data message as the aggregator encodes it (envelope first, then data, checksum)."""
    d = data_message(
        type=type,
        channel=channel,
        symbol="BTC-USD",
        seq=seq,
        epoch=epoch,
        publish_ns=pub,
        event_ns=ev,
        data={"changes": [["buy", "1.00", "2"]]},
        checksum=123,
    )
    return orjson.dumps({**d, **extra})


@given(ns=NS)
def test_iso_bytes_reads_the_timestamps_in_place(ns: int) -> None:
    raw = msg(1, pub=ns, ev=ns - 1_234_000)
    env = b.parse_envelope(raw)
    assert isinstance(env, b.Envelope)
    iso = b.IsoBytes()
    assert iso.ns(raw, env.ts_at) == ns
    assert iso.ns(raw, env.event_at) == ns - 1_234_000
    assert iso.ns(raw, env.ts_at) == ns  # cached second


def test_iso_bytes_other_shapes_and_bound() -> None:
    iso = b.IsoBytes(max_entries=2)
    raw = b'"t":"2026-11-24T08:51:12.5+02:00"'
    assert iso.ns(raw, 5) == ns_from_iso("2026-11-24T06:51:12.500000Z")
    for i in range(5):
        t = iso_from_ns(T0 + i * 1_000_000_000).encode()
        assert iso.ns(b'"' + t + b'"', 1) == T0 + i * 1_000_000_000
    assert len(iso._seconds) <= 2


def test_parse_envelope() -> None:
    env = b.parse_envelope(msg(42, epoch=99, type="trade", channel="trades"))
    assert isinstance(env, b.Envelope)
    assert (env.type, env.channel, env.symbol, env.seq, env.epoch, env.resync) == (
        "trade",
        "trades",
        "BTC-USD",
        42,
        99,
        False,
    )
    assert b.parse_envelope(msg(1, resync=True)).resync  # type: ignore[union-attr]
    null_event = orjson.dumps({**orjson.loads(msg(3)), "event_time": None})
    assert b.parse_envelope(null_event).event_at == -1  # type: ignore[union-attr]
    assert b.parse_envelope(b'{"type":"heartbeat","subscriptions":[{"seq":5}]}') == "heartbeat"
    assert b.parse_envelope(b'{"type":"subscribed","changed":[]}') == "subscribed"
    assert b.parse_envelope(b"[1,2]") is None


def test_tracker_counts_gaps_duplicates_epochs_and_ignores_snapshots_for_latency() -> None:
    t = b.Tracker()
    recv = T0 + 5_000_000  # 5 ms after T0
    t.feed(msg(10, type="l2_snapshot", pub=T0 - 10**9), T0 - 10**8)  # the reply: no latency
    t.measuring = True
    t.feed(msg(11, pub=T0, ev=T0 - 2_000_000), recv)  # 5 ms publish->client, 7 ms event->client
    t.feed(msg(12, pub=T0), recv)
    t.feed(msg(15, pub=T0), recv)  # gap: 13 and 14 missing
    t.feed(msg(15, pub=T0), recv)  # duplicate
    t.feed(msg(14, pub=T0), recv)  # reorder counts as a duplicate too
    t.feed(msg(1, epoch=8, pub=T0), recv)  # an unflagged new epoch
    t.feed(msg(2, epoch=8, pub=T0), recv)
    st_ = t.channels["l2"]
    assert (st_.messages, st_.snapshots, st_.gaps, st_.missed, st_.duplicates) == (8, 1, 1, 2, 2)
    assert st_.epoch_changes == 1
    assert list(st_.publish_ns) == [5_000_000] * 5  # 11, 12, 15, 1, 2
    assert list(st_.event_ns)[0] == 7_000_000


def test_tracker_resync_sets_a_new_base_and_skips_catch_up() -> None:
    t = b.Tracker()
    t.measuring = True
    t.feed(msg(1, type="trades_snapshot", channel="trades"), T0)  # the first one is the base
    t.feed(msg(2, channel="trades", type="trade"), T0 + 1_000_000)
    t.feed(b'{"type":"resync","channel":"trades","symbol":"BTC-USD","reason":"gap"}', T0)
    snap_at = T0 + 50_000_000
    t.feed(msg(40, channel="trades", type="trade", resync=True), snap_at)  # flagged snapshot
    # the tail served with it was published before the snapshot: catch-up, not live
    t.feed(msg(41, channel="trades", type="trade", pub=snap_at - 1), snap_at + 1)
    t.feed(msg(42, channel="trades", type="trade", pub=snap_at + 10_000), snap_at + 3_010_000)
    st_ = t.channels["trades"]
    assert (st_.snapshots, st_.resyncs, st_.gaps, st_.catch_up) == (2, 1, 0, 1)
    assert st_.resync_reasons == {"gap": 1}
    assert list(st_.publish_ns) == [1_000_000, 3_000_000]


def test_tracker_ticker_snapshot_is_the_first_plain_message() -> None:
    t = b.Tracker()
    keys = [("ticker", "BTC-USD")]
    assert not t.synced(keys)
    t.measuring = True
    t.feed(msg(500, type="ticker", channel="ticker"), T0 + 9_000_000)
    assert t.synced(keys)
    t.feed(msg(501, type="ticker", channel="ticker", pub=T0 + 10**7), T0 + 12_000_000)
    assert t.channels["ticker"].snapshots == 1
    assert list(t.channels["ticker"].publish_ns) == [2_000_000]
    t.feed(b'{"type":"error","code":"unknown_symbol","message":"x","target":"l3:X"}', T0)
    assert t.errors == ["unknown_symbol: x (l3:X)"]


# ------------------------------------------------------------------ bench: histogram deltas


def test_bucket_quantile_interpolates_linearly_inside_the_bucket() -> None:
    buckets = {0.001: 10.0, 0.002: 30.0, 0.005: 40.0, b.INF: 40.0}
    assert b.bucket_quantile(0.25, buckets) == pytest.approx(0.001)  # rank 10: top of bucket 1
    assert b.bucket_quantile(0.5, buckets) == pytest.approx(0.0015)  # rank 20: half of bucket 2
    assert b.bucket_quantile(0.99, buckets) == pytest.approx(0.002 + 0.003 * 9.6 / 10)
    assert b.bucket_quantile(0.1, buckets) == pytest.approx(0.0004)  # first bucket starts at 0
    assert b.max_bound(buckets) == 0.005


def test_bucket_quantile_in_the_inf_bucket_and_empty() -> None:
    assert b.bucket_quantile(0.5, {0.001: 1.0, b.INF: 10.0}) == 0.001  # as Prometheus does
    assert b.max_bound({0.001: 1.0, b.INF: 10.0}) == b.INF
    assert b.bucket_quantile(0.5, {0.001: 0.0, b.INF: 0.0}) is None
    assert b.bucket_quantile(0.5, {}) is None
    assert b.hist_summary(b.Hist()) is None


def _scrape(reg: CollectorRegistry) -> b.Series:
    return b.parse_metrics(generate_latest(reg).decode())


def test_percentiles_from_the_deltas_of_real_exposition() -> None:
    reg = CollectorRegistry()
    h = Histogram("md_x_hop_seconds", "x", ["hop"], buckets=HOP_BUCKETS, registry=reg)
    for _ in range(1000):
        h.labels("a").observe(5.0)  # before the window: must not count
    h.labels("b").observe(0.0003)  # another hop: must not count
    before = _scrape(reg)
    for _ in range(90):
        h.labels("a").observe(0.0015)  # (0.001, 0.002]
    for _ in range(10):
        h.labels("a").observe(0.03)  # (0.025, 0.05]
    after = _scrape(reg)
    d = b.histogram(after, "md_x_hop_seconds", {"hop": "a"}).minus(
        b.histogram(before, "md_x_hop_seconds", {"hop": "a"})
    )
    assert d.count == 100
    s = b.hist_summary(d)
    assert s is not None and s["n"] == 100
    assert s["p50"] == pytest.approx((0.001 + 0.001 * 50 / 90) * 1000)
    assert s["p99"] == pytest.approx((0.025 + 0.025 * 9 / 10) * 1000)
    assert s["max_le"] == pytest.approx(50.0)
    assert s["mean"] == pytest.approx((90 * 1.5 + 10 * 30) / 100)


def test_workers_sum_and_a_restart_counts_from_zero() -> None:
    def series(counts: dict[float, float], total: float) -> b.Series:
        out: b.Series = {("h_count", ()): total, ("h_sum", ()): total * 0.001}
        for le, c in counts.items():
            out[("h_bucket", (("le", str(le)),))] = c
        return out

    w1 = b.histogram(series({0.001: 10, b.INF: 10}, 10), "h").minus(
        b.histogram(series({0.001: 4, b.INF: 4}, 4), "h")
    )
    # restarted in the window: its counters went down, so all it counted is new
    w2 = b.histogram(series({0.001: 3, b.INF: 5}, 5), "h").minus(
        b.histogram(series({0.001: 50, b.INF: 50}, 50), "h")
    )
    total = w1.plus(w2)
    assert total.count == 11
    assert total.buckets == {0.001: 9, b.INF: 11}


def test_scrape_workers_keeps_asking_until_every_pid_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(["1", "1", "1", "2", "1", "3"])
    calls = []

    def fake(url: str) -> b.Series:
        pid = next(answers)
        calls.append(pid)
        return {("md_ws_worker_info", (("pid", pid), ("worker", "0"))): 1.0}

    monkeypatch.setattr(b, "scrape", fake)
    assert sorted(b.scrape_workers("http://x/metrics", expected=2)) == ["1", "2"]
    assert calls == ["1", "1", "1", "2"]


class _Feeds:
    """Stands in for the tracker: the receipt time each message was handed with."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int]] = []

    def feed(self, raw: bytes, recv_ns: int) -> None:
        self.got.append((raw, recv_ns))
        for _ in range(20_000):  # the tracker's own work per message takes time
            pass


def _server_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload


@pytest.mark.parametrize("per_message", [False, True])
async def test_bench_client_stamps_receipt_at_the_socket_read(per_message: bool) -> None:
    """Every message of one socket read gets the read's time, not the time the client got to it
    after parsing the ones ahead of it (``--per-message`` keeps that older reading)."""
    from loadtests.fanout_client import Stats

    c = b.BenchClient("h", 1, "/ws", b"{}", Stats())
    c.upgraded = True
    feeds = _Feeds()
    c.tracker = feeds  # type: ignore[assignment]
    c.per_message = per_message
    c.data_received(b"".join(_server_frame(b'{"n":%d}' % i) for i in range(3)))
    assert [raw for raw, _ in feeds.got] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    stamps = [ns for _, ns in feeds.got]
    if per_message:
        assert stamps[0] < stamps[1] < stamps[2]
    else:
        assert stamps[0] == stamps[1] == stamps[2] == c.read_ns > 0


@given(st.lists(st.integers(-(2**40), 2**62), min_size=1, max_size=600))
def test_iso_from_ns_is_exact_whatever_seconds_interleave(values: list[int]) -> None:
    """Publish times, event times and candle bounds of other seconds, interleaved: each is
    formatted as datetime does, and the remembered seconds stay bounded."""
    from datetime import UTC, datetime

    import core.codec as codec

    for ns in values:
        s, rem = divmod(ns, 1_000_000_000)
        want = datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_from_ns(ns) == f"{want}.{rem // 1000:06d}Z"
        assert len(codec._seconds) <= codec._SECONDS_MAX  # noqa: SLF001


def test_leftover_topics_are_the_test_and_benchmark_prefixes_only() -> None:
    names = ["md.in", "md.l2", "test.t1a2b.l2", "bench.x.in", "bcons.y.trades", "testing.l2"]
    assert b.leftover_topics(names) == 3  # "testing." is not a run's prefix


def test_the_report_warns_only_when_leftovers_were_found() -> None:
    assert b._leftover_line(None) == [] and b._leftover_line(0) == []
    (line,) = b._leftover_line(55)
    assert "55 topics" in line and "make clean-topics" in line
