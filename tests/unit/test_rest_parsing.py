"""REST pure pieces: time/cursor parsing, rate-limit decisions, config parsing."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_rest.app import ApiError, parse_cursor, parse_range, parse_time
from gateway_rest.config import RestConfig
from gateway_rest.ratelimit import decide


def test_parse_time_accepts_iso_seconds_and_millis() -> None:
    assert parse_time("2026-11-24T00:00:00Z", "start") == 1795478400 * 10**9
    assert parse_time("1795478400", "start") == 1795478400 * 10**9
    assert parse_time("1795478400000", "start") == 1795478400 * 10**9
    assert parse_time(None, "start") is None and parse_time("", "end") is None


@pytest.mark.parametrize("raw", ["yesterday", "-5", "2026-13-01", "12:00"])
def test_parse_time_rejects_naming_parameter(raw: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_time(raw, "end")
    assert e.value.status == 422 and e.value.parameter == "end" and "end" in e.value.message


def test_range_and_cursor() -> None:
    with pytest.raises(ApiError) as e:
        parse_range("1700000001", "1700000000")
    assert e.value.parameter == "start"
    assert parse_cursor("123:abc:def") == (123, "abc:def")
    for bad in ("abc", "x:1", "12:", "\u00b2:a"):  # "²": isdigit() but not int()
        with pytest.raises(ApiError):
            parse_cursor(bad)


def test_decide_window_and_headers() -> None:
    d = decide(3, 5, now=100.25, window_s=1)
    assert d.allowed and d.remaining == 2 and d.reset_s == pytest.approx(0.75)
    d = decide(6, 5, now=130.0, window_s=60)
    assert not d.allowed and d.remaining == 0
    assert dict(d.headers())[b"retry-after"] == b"50"
    assert b"retry-after" not in dict(decide(1, 5, 0.5, 1).headers())


def test_config_from_env() -> None:
    cfg = RestConfig.from_settings(
        Settings.from_env({"MD_REST_API_KEYS": "a:pro, b:basic", "MD_REST_ANON_RPS": "7"})
    )
    assert cfg.api_keys == {"a": "pro", "b": "basic"} and cfg.tiers["anonymous"].limit == 7
    off = RestConfig.from_settings(Settings.from_env({"MD_REST_RATE_LIMIT": "0"}))
    assert all(t.limit == 0 for t in off.tiers.values())
    with pytest.raises(ConfigError) as e:
        RestConfig.from_settings(Settings.from_env({"MD_REST_API_KEYS": "a:gold"}))
    assert e.value.key == "MD_REST_API_KEYS"


def test_chunk_for_is_exact_for_small_limits() -> None:
    from gateway_rest.ratelimit import chunk_for

    assert chunk_for(5) == 1 and chunk_for(200) == 4 and chunk_for(10**9) == 1000


async def test_l3_depth_keeps_whole_price_levels() -> None:
    import orjson

    from gateway_rest.store import MarketStore

    class Fake(MarketStore):
        async def string(self, key: str, what: str) -> bytes:
            return orjson.dumps(
                {
                    "symbol": "X-Y",
                    "seq": 1,
                    "epoch": 1,
                    "timestamp": "",
                    "level": 3,
                    "bids": [["10", "1", "a"], ["10", "2", "b"], ["9", "1", "c"], ["8", "1", "d"]],
                    "asks": [["11", "1", "e"]],
                }
            )

    st = Fake(Settings())
    b = orjson.loads(await st.l3_book("X-Y", 2))
    assert [o[2] for o in b["bids"]] == ["a", "b", "c"] and [o[2] for o in b["asks"]] == ["e"]
    assert b["depth"] == 2
    await st.close()
