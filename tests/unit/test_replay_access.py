"""The replay server's access rules (issue 12 for the replay server of issue 13): development
defaults refused off loopback, the live gateway's JWT and channel entitlements, order ids per
tier, signatures, and its own settings checked at start."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import orjson
import pytest

from core.errors import ConfigError
from core.security import ALLOW_INSECURE, InsecureDefaults, replay_findings, require_secure
from core.settings import Settings
from core.signing import Signer, Verifier, split_signed, write_keypair
from gateway_ws.protocol import ProtocolError
from gateway_ws.replay_access import ConnectionLimits, ReplayAccess
from gateway_ws.replay_server import ReplayConfig

JWT_SECRET = "a-replay-test-secret-long-enough-for-hs256"
ANON_SECRET = "an-anonymization-secret-0123456789"
SECURE = {
    "MD_WS_JWT_HS256_SECRET": JWT_SECRET,
    "MD_WS_ANON_CHANNELS": "trades",
    "MD_REPLAY_TLS_CERT": "/etc/md/tls/tls.crt",
    "MD_REPLAY_TLS_KEY": "/etc/md/tls/tls.key",
}
TIERS = orjson.dumps(
    {
        "pro": {"channels": "*"},
        "basic": {"channels": ["trades", "l2"]},
        "internal": {"channels": "*"},
    }
).decode()


def env(**kw: str) -> Settings:
    return Settings.from_env(kw)


def token(tier: str, exp_in: float = 60, **claims: object) -> str:
    body = {"sub": f"u-{tier}", "tier": tier, "exp": int(time.time() + exp_in), **claims}
    return jwt.encode(body, JWT_SECRET, "HS256")


# ------------------------------------------------------------------ development defaults


def test_every_development_default_of_the_replay_server_is_named() -> None:
    text = " ".join(str(f) for f in replay_findings(env()))
    for var in ("MD_WS_JWT_HS256_SECRET", "MD_WS_ANON_CHANNELS", "MD_REPLAY_TLS_CERT"):
        assert var in text
    assert replay_findings(env(**SECURE)) == []


def test_the_live_gateways_tls_is_not_the_replay_servers() -> None:
    """TLS is per listener: MD_WS_TLS_CERT does not put the replay port under TLS."""
    s = {k: v for k, v in SECURE.items() if not k.startswith("MD_REPLAY_TLS")}
    found = replay_findings(env(**s, MD_WS_TLS_CERT="/x.crt", MD_WS_TLS_KEY="/x.key"))
    assert [f.settings for f in found] == ["MD_REPLAY_TLS_CERT/MD_REPLAY_TLS_KEY"]


@pytest.mark.parametrize("anon", ["*", "trades,l3"])
def test_anonymous_l3_history_is_a_finding(anon: str) -> None:
    assert replay_findings(env(**{**SECURE, "MD_WS_ANON_CHANNELS": anon}))


def test_refused_off_loopback_unless_insecure_on_purpose() -> None:
    s = env()
    with pytest.raises(InsecureDefaults) as exc:
        require_secure("replay", "0.0.0.0", replay_findings(s), s)
    assert ALLOW_INSECURE in str(exc.value) and "MD_REPLAY_TLS_CERT" in str(exc.value)
    require_secure("replay", "127.0.0.1", replay_findings(s), s)  # make run: loopback
    s = env(MD_ALLOW_INSECURE="1")
    require_secure("replay", "0.0.0.0", replay_findings(s), s)


@pytest.mark.parametrize(
    "bad,var",
    [
        ({"MD_REPLAY_TLS_CERT": "/x.crt"}, "MD_REPLAY_TLS_KEY"),
        ({"MD_REPLAY_MAX_ACTIVE": "0"}, "MD_REPLAY_MAX_ACTIVE"),
        ({"MD_REPLAY_DB_POOL": "0"}, "MD_REPLAY_DB_POOL"),
        ({"MD_REPLAY_MAX_CONNECTIONS": "0"}, "MD_REPLAY_MAX_CONNECTIONS"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(bad: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ReplayConfig.from_settings(env(**bad))
    assert var in str(exc.value)


def test_a_short_jwt_secret_is_refused_as_on_the_live_gateway() -> None:
    with pytest.raises(ConfigError):
        ReplayAccess.from_settings(env(MD_WS_JWT_HS256_SECRET="short"))


# ------------------------------------------------------------------ who may replay what


def test_without_keys_everybody_is_anonymous_and_auth_unavailable() -> None:
    access = ReplayAccess.from_settings(env())
    assert not access.auth_enabled
    access.check(access.anonymous, "l3")  # the development default: every channel
    with pytest.raises(ProtocolError) as exc:
        access.verify(token("pro"))
    assert exc.value.code == "auth_unavailable"


def test_channels_follow_the_tier() -> None:
    access = ReplayAccess.from_settings(env(**SECURE, MD_WS_TIERS=TIERS))
    access.check(access.anonymous, "trades")
    for channel in ("l2", "l3"):
        with pytest.raises(ProtocolError) as exc:
            access.check(access.anonymous, channel)
        assert exc.value.code == "auth_required"
    basic = access.verify(token("basic"))
    access.check(basic, "l2")
    with pytest.raises(ProtocolError) as exc:
        access.check(basic, "l3")
    assert exc.value.code == "forbidden"
    access.check(access.verify(token("pro")), "l3")


@pytest.mark.parametrize(
    "tok,code",
    [
        ("not-a-jwt", "auth_failed"),
        (
            jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "another-secret" * 4),
            "auth_failed",
        ),
        (token("pro", exp_in=-5), "auth_failed"),
        (token("gold"), "auth_failed"),  # unknown tier
        (token("pro", exp_in=10 * 86400), "auth_failed"),  # above MD_WS_JWT_MAX_LIFETIME_S
        ("", "auth_failed"),
    ],
)
def test_bad_tokens_are_refused(tok: str, code: str) -> None:
    access = ReplayAccess.from_settings(env(**SECURE, MD_WS_TIERS=TIERS))
    with pytest.raises(ProtocolError) as exc:
        access.verify(tok)
    assert exc.value.code == code


def test_an_expired_token_replays_nothing_more() -> None:
    access = ReplayAccess.from_settings(env(**SECURE, MD_WS_TIERS=TIERS))
    pro = access.verify(token("pro", exp_in=30))
    access.check(pro, "l3")
    with pytest.raises(ProtocolError) as exc:
        access.check(pro, "l3", now=time.time() + 31)
    assert exc.value.code == "token_expired"


# ------------------------------------------------------------------ what leaves

TRADE = orjson.dumps(
    {
        "type": "trade",
        "channel": "trades",
        "symbol": "BTC-USD",
        "seq": 7,
        "epoch": 1,
        "timestamp": "2026-12-06T10:00:00.000000Z",
        "data": {
            "trade_id": "t7",
            "price": "100.5",
            "size": "0.1",
            "maker_order_id": "m-1",
            "taker_order_id": "t-1",
            "account_id": "acct-42",
        },
    }
)


def test_order_ids_per_tier_and_never_an_account_field() -> None:
    access = ReplayAccess.from_settings(
        env(
            **SECURE,
            MD_WS_TIERS=TIERS,
            MD_ANON_SECRET=ANON_SECRET,
            MD_WS_ORDER_IDS="internal=raw,pro=pseudonym,*=omit",
        )
    )
    seen = {
        name: orjson.loads(access.view(p)(TRADE))["data"]
        for name, p in (
            ("anonymous", access.anonymous),
            ("pro", access.verify(token("pro"))),
            ("internal", access.verify(token("internal"))),
        )
    }
    assert all("account_id" not in d for d in seen.values())
    assert "maker_order_id" not in seen["anonymous"] and "taker_order_id" not in seen["anonymous"]
    assert seen["internal"]["maker_order_id"] == "m-1"
    pseudo = seen["pro"]["maker_order_id"]
    assert pseudo.startswith("o_") and pseudo != "m-1"
    # stable: the same order id gives the same pseudonym in the next message
    again = orjson.loads(access.view(access.verify(token("pro")))(TRADE))["data"]
    assert again["maker_order_id"] == pseudo


def test_the_stored_bytes_leave_untouched_when_nothing_applies() -> None:
    access = ReplayAccess.from_settings(env())
    clean = TRADE.replace(b',"account_id":"acct-42"', b"")
    assert access.view(access.anonymous)(clean) is clean


def test_replayed_messages_are_signed_after_the_policy(tmp_path: Path) -> None:
    key, _ = write_keypair(str(tmp_path))
    access = ReplayAccess.from_settings(
        env(
            **SECURE,
            MD_ANON_SECRET=ANON_SECRET,
            MD_WS_ORDER_IDS="omit",
            MD_SIGNING_KEY=str(key),
        )
    )
    out = access.view(access.anonymous)(TRADE)
    signer = Signer.from_settings(env(MD_SIGNING_KEY=str(key)))
    assert signer is not None
    assert Verifier([signer.public_key]).verify(out) is None
    parts = split_signed(out)
    assert parts is not None and b"order_id" not in parts[0] and b"acct-42" not in parts[0]


def test_asyncapi_lists_every_error_code_of_the_replay_server() -> None:
    """Every code the replay server or its access rules can send is in docs/asyncapi.yaml."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[2]
    src = "".join((root / f).read_text() for f in REPLAY_SOURCES)
    sent = set(re.findall(r'(?:ReplayError|ProtocolError|_error)\(\s*"([a-z_]+)"', src))
    for pair in re.findall(r'code = "([a-z_]+)" if .* else "([a-z_]+)"', src):
        sent |= set(pair)
    sent |= {"auth_failed"}  # gateway_ws.auth.Authenticator's refusals
    doc = yaml.safe_load((root / "docs/asyncapi.yaml").read_text())
    listed = set(
        doc["components"]["messages"]["replayError"]["payload"]["properties"]["code"]["enum"]
    )
    assert {"no_history", "auth_required", "token_expired"} <= sent
    assert sent - listed == set(), "codes missing from replayError in docs/asyncapi.yaml"


REPLAY_SOURCES = ("gateway_ws/replay_server.py", "gateway_ws/replay_access.py")


# ------------------------------------------------------------------ connections


def test_connections_per_address_and_per_user() -> None:
    access = ReplayAccess.from_settings(
        env(**SECURE, MD_WS_MAX_CONN_PER_IP="2", MD_WS_TIERS='{"solo": {"max_connections": 1}}')
    )
    limits = ConnectionLimits(access.max_conn_per_ip)
    anon, solo = access.anonymous, access.verify(token("solo"))
    for _ in range(2):
        assert limits.refusal(anon, "10.0.0.1") is None
        limits.add(anon, "10.0.0.1")
    assert limits.refusal(anon, "10.0.0.1") == "too many connections from this address"
    assert limits.refusal(anon, "10.0.0.2") is None  # another address
    limits.add(solo, "10.0.0.3")
    assert limits.refusal(solo, "10.0.0.4") == "too many connections for this user"
    # an auth moving an anonymous connection to the full user is refused and counts nothing
    assert limits.move(anon, solo, "10.0.0.1") is not None
    assert limits.per_ip == {"10.0.0.1": 2} and limits.per_user == {"u-solo": 1}
    limits.remove(solo, "10.0.0.3")
    assert limits.move(anon, solo, "10.0.0.1") is None
    assert limits.per_ip == {"10.0.0.1": 1} and limits.per_user == {"u-solo": 1}
    assert limits.refusal(anon, "10.0.0.1") is None  # the moved one freed its address slot
