"""core.security: gateways refuse development defaults off loopback; secrets are never printed."""

from __future__ import annotations

import logging

import pytest

from core.errors import ConfigError
from core.security import (
    ALLOW_INSECURE,
    InsecureDefaults,
    fingerprint,
    fix_findings,
    is_loopback,
    require_secure,
    rest_findings,
    ws_findings,
)
from core.settings import Settings
from gateway_rest.config import RestConfig
from gateway_ws.config import WsConfig

SECURE_WS = {
    "MD_WS_JWT_HS256_SECRET": "x" * 32,
    "MD_WS_ANON_CHANNELS": "ticker,trades",
    "MD_WS_TLS_CERT": "/etc/md/tls.crt",
    "MD_WS_TLS_KEY": "/etc/md/tls.key",
}
SECURE_REST = {
    "MD_REST_API_KEYS": "k" * 24 + ":pro",
    "MD_REST_REQUIRE_KEY": "1",
    "MD_REST_TLS_CERT": "/etc/md/tls.crt",
    "MD_REST_TLS_KEY": "/etc/md/tls.key",
}
SECURE_FIX = {
    "MD_FIX_SESSIONS_FILE": "/etc/md/fix-sessions.toml",
    "MD_FIX_TLS_CERT": "/etc/md/tls.crt",
    "MD_FIX_TLS_KEY": "/etc/md/tls.key",
}


def env(**kw: str) -> Settings:
    return Settings.from_env(kw)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gateway.example.com", ""])
def test_reachable_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_every_development_default_is_named() -> None:
    ws = " ".join(str(f) for f in ws_findings(env()))
    for var in ("MD_WS_JWT_HS256_SECRET", "MD_WS_ANON_CHANNELS", "MD_WS_TLS_CERT"):
        assert var in ws
    rest = " ".join(str(f) for f in rest_findings(env()))
    for var in ("MD_REST_API_KEYS", "MD_REST_REQUIRE_KEY", "MD_REST_TLS_CERT"):
        assert var in rest
    fix = " ".join(str(f) for f in fix_findings(env(), []))
    assert "MD_FIX_SESSIONS_FILE" in fix and "CLIENT1" in fix and "MD_FIX_TLS_CERT" in fix


def test_secure_settings_have_no_findings() -> None:
    assert ws_findings(env(**SECURE_WS)) == []
    assert rest_findings(env(**SECURE_REST)) == []
    assert fix_findings(env(**SECURE_FIX), []) == []


@pytest.mark.parametrize(
    "changes",
    [{"MD_WS_ANON_CHANNELS": "*"}, {"MD_WS_ANON_CHANNELS": "ticker,l3"}],
)
def test_anonymous_l3_on_websocket_is_a_finding(changes: dict[str, str]) -> None:
    assert ws_findings(env(**{**SECURE_WS, **changes}))


def test_rest_anonymous_without_l3_is_enough() -> None:
    e = {**SECURE_REST, "MD_REST_REQUIRE_KEY": "0", "MD_REST_ANON_L3": "0"}
    assert rest_findings(env(**e)) == []
    e["MD_REST_ANON_L3"] = "1"
    assert rest_findings(env(**e))


def test_fix_sessions_without_credentials_are_named() -> None:
    found = fix_findings(env(**SECURE_FIX), ["MDGW-FUND7"])
    assert len(found) == 1 and "MDGW-FUND7" in str(found[0])


def test_refuses_on_a_reachable_address_naming_settings_and_the_override() -> None:
    with pytest.raises(InsecureDefaults) as ei:
        require_secure("gateway_ws", "0.0.0.0", ws_findings(env()), env())
    msg = str(ei.value)
    assert ALLOW_INSECURE in msg and "MD_WS_TLS_CERT" in msg and "0.0.0.0" in msg
    assert isinstance(ei.value, ConfigError)


def test_loopback_and_secure_settings_start() -> None:
    require_secure("gateway_ws", "127.0.0.1", ws_findings(env()), env())
    s = env(**SECURE_WS)
    require_secure("gateway_ws", "0.0.0.0", ws_findings(s), s)


def test_allow_insecure_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    s = env(MD_ALLOW_INSECURE="1")
    with caplog.at_level(logging.WARNING, logger="core.security"):
        require_secure("fix_gateway", "0.0.0.0", fix_findings(s, []), s)
    assert any("development defaults" in r.getMessage() for r in caplog.records)


def test_short_hs256_secret_is_refused_without_printing_it() -> None:
    secret = "hunter2-short"
    with pytest.raises(ConfigError) as ei:
        WsConfig.from_settings(env(MD_WS_JWT_HS256_SECRET=secret))
    assert ei.value.key == "MD_WS_JWT_HS256_SECRET"
    assert "32 bytes" in str(ei.value) and secret not in str(ei.value)
    WsConfig.from_settings(env(MD_WS_JWT_HS256_SECRET="s" * 32))  # long enough: accepted


@pytest.mark.parametrize(
    "raw",
    [
        "sk_live_AAAA1111:pro,sk_live_BBBB2222:gold",  # unknown tier
        "sk_live_AAAA1111:pro,sk_live_BBBB2222",  # no tier
        "sk_live_AAAA1111:anonymous",
    ],
)
def test_malformed_api_keys_are_not_printed(raw: str) -> None:
    with pytest.raises(ConfigError) as ei:
        RestConfig.from_settings(env(MD_REST_API_KEYS=raw))
    text = str(ei.value) + repr(ei.value.__cause__) + repr(ei.value.__context__)
    assert "MD_REST_API_KEYS" in text
    assert "sk_live" not in text and "AAAA" not in text and "BBBB" not in text


def test_other_malformed_settings_still_show_their_value() -> None:
    with pytest.raises(ConfigError, match="'abc'"):
        Settings.from_env({"MD_REST_PORT": "abc"})


def test_fingerprint_is_stable_and_hides_the_key() -> None:
    key = "sk_live_AAAA1111"
    assert fingerprint(key) == fingerprint(key) != fingerprint(key + "x")
    assert key not in fingerprint(key) and len(fingerprint(key)) == 16


def test_rate_limit_keys_name_a_fingerprint_never_the_api_key() -> None:
    from core.cache_keys import CacheKeys

    k = CacheKeys("md")
    name = k.ratelimit("k:sk_live_AAAA1111", 42)
    assert "sk_live" not in name and fingerprint("sk_live_AAAA1111") in name
    assert k.ratelimit("k:a", 1) != k.ratelimit("k:b", 1)  # keys keep their own budgets
    assert k.ratelimit("ip:10.0.0.1", 42) == "md:rl:ip:10.0.0.1:42"  # addresses stay readable
