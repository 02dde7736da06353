"""Gateway settings from the environment: defaults, anonymous access, strict errors."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_ws.config import WsConfig


def cfg(**env: str) -> WsConfig:
    return WsConfig.from_settings(Settings.from_env(env))


def test_defaults_let_anonymous_clients_use_every_channel() -> None:
    c = cfg()
    assert c.anon_channels is None and c.anonymous_tier.channels is None
    assert c.port == 8001 and c.buffer_high == 256 * 1024 and c.preframed


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("*", None),
        ("ticker,trades", frozenset({"ticker", "trades"})),
        ("", frozenset()),  # set but empty: no anonymous access (README production settings)
        ("none", frozenset()),
    ],
)
def test_anonymous_channels(raw: str, want: frozenset[str] | None) -> None:
    assert cfg(MD_WS_ANON_CHANNELS=raw).anon_channels == want


def test_tiers_from_json_and_bad_values_name_the_variable() -> None:
    c = cfg(
        MD_WS_TIERS='{"vip":{"max_subscriptions":7,"channels":["l3"]}}', MD_WS_DEFAULT_TIER="vip"
    )
    assert c.tiers["vip"].max_subscriptions == 7 and c.tiers["vip"].channels == frozenset({"l3"})
    assert "basic" in c.tiers and "pro" in c.tiers
    with pytest.raises(ConfigError, match="MD_WS_DEFAULT_TIER"):
        cfg(MD_WS_DEFAULT_TIER="gold")
    with pytest.raises(ConfigError, match="MD_WS_BUFFER_BYTES"):
        cfg(MD_WS_BUFFER_BYTES="lots")
    with pytest.raises(ConfigError, match="MD_WS_TIERS"):
        cfg(MD_WS_TIERS='{"vip": 3}')
    with pytest.raises(ConfigError, match="MD_WS_TLS_KEY"):
        cfg(MD_WS_TLS_CERT="/x.pem")
