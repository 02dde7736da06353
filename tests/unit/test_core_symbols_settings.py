from __future__ import annotations

import pytest

from core.errors import ConfigError, SymbolError
from core.settings import Settings
from core.symbols import SymbolInfo, default_info, normalize_symbol


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("BTC-USD", "BTC-USD"),
        ("btc-usd", "BTC-USD"),
        ("BTC/USD", "BTC-USD"),
        (" eth_usd ", "ETH-USD"),
        ("1inch-usdt", "1INCH-USDT"),
    ],
)
def test_normalize_accepts_common_spellings(raw: str, expected: str) -> None:
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize("raw", ["BTCUSD", "BTC-USD-X", "", "BTC-", "-USD", "B$C-USD", 42, None])
def test_normalize_rejects_malformed(raw: object) -> None:
    with pytest.raises(SymbolError):
        normalize_symbol(raw)


def test_symbol_info_round_trip() -> None:
    info = default_info("BTC-USD")
    assert SymbolInfo.from_dict(info.to_dict()) == info
    assert info.base == "BTC" and info.quote == "USD"


def test_settings_defaults_match_architecture_ports() -> None:
    s = Settings.from_env({})
    assert (s.rest_port, s.ws_port, s.fix_port) == (8000, 8001, 9876)
    assert (
        s.kafka_bootstrap.endswith(":19092")
        and ":15432/" in s.pg_dsn
        and s.redis_url.endswith(":16379/0")
    )
    assert s.symbols == ("BTC-USD", "ETH-USD", "LTC-USD")


def test_settings_parse_and_normalize() -> None:
    s = Settings.from_env(
        {"MD_REST_PORT": "9000", "MD_SYMBOLS": "btc/usd, sol-usd", "MD_SIM_RATE": "2.5"}
    )
    assert s.rest_port == 9000 and s.symbols == ("BTC-USD", "SOL-USD") and s.sim_rate == 2.5
    assert s.get("MD_SIM_RATE", float, 0.0) == 2.5
    assert s.get("MD_ABSENT", int, 7) == 7


@pytest.mark.parametrize(
    "key,value",
    [
        ("MD_REST_PORT", "http"),
        ("MD_WS_PORT", "70000"),
        ("MD_SIM_RATE", "fast"),
        ("MD_SIM_TICK_MS", "0"),
        ("MD_SIM_TICK_MS", "5000"),
    ],
)
def test_bad_setting_names_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({key: value})
    assert key in str(err.value)


def test_bad_symbol_setting_fails_at_start() -> None:
    with pytest.raises(SymbolError):
        Settings.from_env({"MD_SYMBOLS": "BTCUSD"})


def test_sim_fx_empty_means_none() -> None:
    from aggregator.sources.simulator import DEFAULT_FX, fx_pairs

    assert fx_pairs(Settings.from_env({"MD_SIM_FX": ""})) == ()
    assert fx_pairs(Settings.from_env({"MD_SIM_FX": " "})) == ()
    assert fx_pairs(Settings.from_env({})) == DEFAULT_FX
    assert fx_pairs(Settings.from_env({"MD_SIM_FX": "eur/usd"})) == ("EUR-USD",)
