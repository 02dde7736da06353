"""The pure parts of the load tooling: seq continuity of the WS users, subscription mix, latency
parsing, and the docs/benchmarks.md section update (which must never touch other sections)."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.locust_common import StreamChecker, parse_ts, pick_subscriptions
from loadtests.run_locust import HEADER, SECTION, TABLE_END, TABLE_START, table_row, update_section


def msg(
    seq: int,
    type_: str = "l2_update",
    channel: str = "l2",
    symbol: str = "BTC-USD",
    epoch: int = 1,
    **kw,
):
    return {
        "type": type_,
        "channel": channel,
        "symbol": symbol,
        "seq": seq,
        "epoch": epoch,
        "data": {},
        **kw,
    }


def test_importing_the_helpers_does_not_import_locust() -> None:
    """locust monkey-patches the stdlib with gevent on import; the test process must stay clean."""
    code = (
        "import sys, loadtests.locust_common, loadtests.run_locust; "
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, sorted(sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr


def test_checker_accepts_a_continuous_stream() -> None:
    c = StreamChecker()
    assert [c.observe(m) for m in (msg(10, "l2_snapshot"), msg(11), msg(12), msg(13))] == [None] * 4
    assert (c.gaps, c.duplicates) == (0, 0)


def test_checker_reports_gaps_and_duplicates() -> None:
    c = StreamChecker()
    c.observe(msg(1, "l2_snapshot"))
    c.observe(msg(2))
    gap = c.observe(msg(5))
    assert gap and "expected 3, got 5" in gap
    assert c.missed == 2
    dup = c.observe(msg(5))
    assert dup and "duplicate" in dup
    assert (c.gaps, c.duplicates) == (1, 1)


def test_snapshot_resync_and_epoch_restart_the_count() -> None:
    c = StreamChecker()
    c.observe(msg(1, "l2_snapshot"))
    assert c.observe(msg(100, "l2_snapshot")) is None
    assert c.observe(msg(500, resync=True)) is None
    assert c.observe(msg(3, epoch=2)) is None  # new epoch: history no longer comparable
    assert c.observe(msg(4, epoch=2)) is None
    assert c.gaps == 0


def test_streams_are_independent_per_channel_and_symbol() -> None:
    c = StreamChecker()
    c.observe(msg(1, channel="trades", type_="trade"))
    c.observe(msg(7, channel="trades", type_="trade", symbol="ETH-USD"))
    assert c.observe(msg(2, channel="trades", type_="trade")) is None
    assert c.observe(msg(9, channel="trades", type_="trade", symbol="ETH-USD"))  # 8 missing
    c.forget("trades", "BTC-USD")
    assert c.observe(msg(50, channel="trades", type_="trade")) is None  # resubscribed: new baseline


def test_resubscribe_ignores_in_flight_messages_until_the_ack() -> None:
    c = StreamChecker()
    t: dict[str, Any] = {"channel": "ticker", "type_": "ticker", "symbol": "LTC-USD"}
    assert c.observe(msg(7000, **t)) is None
    c.forget("ticker", "LTC-USD")  # unsubscribed
    assert c.observe(msg(7001, **t)) is None  # in flight: becomes the baseline...
    c.expect("ticker", "LTC-USD")  # ...until subscribed again
    assert c.observe(msg(7002, **t)) is None  # still in flight from the old subscription: ignored
    c.observe(
        {"type": "subscribed", "changed": ["ticker:LTC-USD"], "subscriptions": ["ticker:LTC-USD"]}
    )
    assert c.observe(msg(7398, **t)) is None  # the snapshot (a plain ticker) starts the count
    assert c.observe(msg(7399, **t)) is None
    assert c.observe(msg(7401, **t))  # a real gap is still caught
    assert c.gaps == 1


def test_resync_control_message_restarts_its_stream() -> None:
    c = StreamChecker()
    c.observe(msg(1, channel="trades", type_="trade"))
    c.observe(
        {"type": "resync", "channel": "trades", "symbol": "BTC-USD", "reason": "gap", "seq": 90}
    )
    assert c.observe(msg(90, channel="trades", type_="trade")) is None
    assert c.gaps == 0


def test_non_data_messages_are_ignored() -> None:
    c = StreamChecker()
    assert c.observe({"type": "subscribed", "channels": ["l2:BTC-USD"]}) is None
    assert c.observe({"type": "heartbeat", "seq": "x"}) is None


def test_subscription_mix() -> None:
    rng = random.Random(1)
    syms = ["BTC-USD", "ETH-USD", "LTC-USD"]
    seen = set()
    for _ in range(200):
        subs = pick_subscriptions(rng, syms)
        assert subs and len(subs) == len(set(subs))
        for s in subs:
            ch, sym = s.split(":")
            assert sym in syms
            seen.add(ch)
    assert seen == {"ticker", "l2", "trades", "candles_1m"}


def test_parse_ts() -> None:
    t = parse_ts("2026-11-24T06:51:12.123456Z")
    assert t == datetime(2026, 11, 24, 6, 51, 12, 123456, tzinfo=UTC).timestamp()


ROOT = Path(__file__).resolve().parents[2]
SUMMARY = {
    "requests": 1000,
    "requests_per_s": 33.3,
    "p50_ms": 2,
    "p95_ms": 5,
    "p99_ms": 9,
    "failures": 0,
}


def _row(scenario: str, users: int, p99: int = 9) -> str:
    return table_row(
        scenario,
        users,
        "30s",
        {**SUMMARY, "p99_ms": p99},
        "req/s",
        "2026-11-24 07:00",
        "abc1234",
        "2 cores",
    )


def test_section_created_when_missing_and_others_kept() -> None:
    doc = "# Benchmarks\n\n## Machine\n\n2 cores.\n\n## Fan-out\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    out = update_section(doc, _row("rest", 20), ("rest", "20"))
    assert out.startswith(doc.rstrip("\n"))  # everything before is untouched
    assert SECTION in out and TABLE_START in out and TABLE_END in out and HEADER in out
    assert out.count("| rest | 20 |") == 1


def test_row_replaced_per_scenario_and_users_other_sections_untouched() -> None:
    doc = "# Benchmarks\n\n## Machine\n\nx\n"
    doc = update_section(doc, _row("rest", 20), ("rest", "20"))
    doc += "\n## Later section by someone else\n\nkeep me | not a row\n"
    doc = update_section(doc, _row("ws", 50), ("ws", "50"))
    doc = update_section(doc, _row("rest", 20, p99=42), ("rest", "20"))
    doc = update_section(doc, _row("rest", 100), ("rest", "100"))
    assert doc.count("| rest | 20 |") == 1 and "| 42 |" in doc
    assert "| rest | 100 |" in doc and "| ws | 50 |" in doc
    assert doc.endswith("## Later section by someone else\n\nkeep me | not a row\n")
    assert doc.startswith("# Benchmarks\n\n## Machine\n\nx\n")


def test_empty_file_gets_a_title() -> None:
    out = update_section("", _row("ws", 5), ("ws", "5"))
    assert out.startswith("# Benchmarks\n")


def test_notes_after_the_table_are_kept_and_the_intro_refreshed() -> None:
    doc = update_section("# Benchmarks\n", _row("ws", 5), ("ws", "5"))
    doc = doc.replace("Written by", "OLD INTRO Written by") + "\nA note under the table.\n"
    doc = update_section(doc, _row("ws", 5, p99=7), ("ws", "5"))
    assert "OLD INTRO" not in doc and "A note under the table." in doc
