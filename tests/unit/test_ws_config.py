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


def test_hs256_secret_must_have_256_bits() -> None:
    """Issue 12 / RFC 7518 §3.2: a short HS256 secret was accepted."""
    with pytest.raises(ConfigError, match="MD_WS_JWT_HS256_SECRET"):
        cfg(MD_WS_JWT_HS256_SECRET="x" * 31)
    assert cfg(MD_WS_JWT_HS256_SECRET="x" * 32).jwt_hs256_secret == "x" * 32


def test_token_lifetime_and_buffer_bounds_are_settings() -> None:
    c = cfg(
        MD_WS_JWT_MAX_LIFETIME_S="600",
        MD_WS_PROCESS_BUFFER_BYTES="1048576",
        MD_WS_RESUME_CONCURRENCY="2",
    )
    assert (c.jwt_max_lifetime_s, c.process_buffer_bytes, c.resume_concurrency) == (
        600,
        1 << 20,
        2,
    )
    with pytest.raises(ConfigError, match="MD_WS_JWT_MAX_LIFETIME_S"):
        cfg(MD_WS_JWT_MAX_LIFETIME_S="0")
    with pytest.raises(ConfigError, match="MD_WS_PROCESS_BUFFER_BYTES"):
        cfg(MD_WS_PROCESS_BUFFER_BYTES="1000")
