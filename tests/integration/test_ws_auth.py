"""JWT auth, tiers and limits on a real gateway."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.settings import Settings
from gateway_ws.protocol import Tier
from tests.integration.ws_helpers import (
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv,
    recv_until,
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration

SECRET = "test-secret-that-is-long-enough-for-hs256"


def hs(sub: str, tier: str = "pro", exp: float | None = None) -> str:
    return jwt.encode(
        {"sub": sub, "tier": tier, "exp": int(exp or time.time() + 60)}, SECRET, "HS256"
    )


async def test_jwt_tiers_restricted_anonymous_channels_and_limits(settings: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    tiers = {
        "pro": Tier("pro", max_subscriptions=10, max_connections=1),
        "basic": Tier("basic", max_subscriptions=2, max_connections=5),
    }
    async with running_gateway(
        settings,
        jwt_hs256_secret=SECRET,
        jwt_rs256_public_key=pub,
        anon_channels=frozenset({"ticker"}),
        tiers=tiers,
        max_conn_per_ip=3,
    ) as gw:
        # anonymous: ticker yes, l3 no
        async with connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channels": ["ticker:BTC-USD", "l3:BTC-USD"]})
            msgs = [await recv(ws), await recv(ws)]
            err = next(m for m in msgs if m["type"] == "error")
            assert err["code"] == "auth_required" and err["target"] == "l3:BTC-USD"
            # a bad token in a message: error, session open; then RS256 upgrades the tier
            await send(ws, {"type": "auth", "token": "not.a.jwt"})
            assert (await recv_until(ws, lambda m: m["type"] == "error"))["code"] == "auth_failed"
            forged = jwt.encode(
                {"sub": "eve", "exp": int(time.time() + 60)},
                "wrong-secret-wrong-secret-wrong!",
                "HS256",
            )
            await send(ws, {"type": "auth", "token": forged})
            assert (await recv_until(ws, lambda m: m["type"] == "error"))["code"] == "auth_failed"
            rs = jwt.encode(
                {"sub": "bob", "tier": "basic", "exp": int(time.time() + 60)}, key, "RS256"
            )
            await send(ws, {"type": "auth", "token": rs})
            ok = await recv_until(ws, lambda m: m["type"] == "authenticated")
            assert (ok["user"], ok["tier"]) == ("bob", "basic")
            await send(ws, {"type": "subscribe", "channels": ["l3:BTC-USD", "l2:BTC-USD"]})
            msgs = [
                await recv_until(ws, lambda m: m["type"] in ("error", "subscribed"))
                for _ in range(2)
            ]
            assert {m["type"] for m in msgs} == {"error", "subscribed"}
            assert next(m for m in msgs if m["type"] == "error")["code"] == "too_many_subscriptions"

        # token in the query string; expired token refused at the upgrade with 401
        async with connect(url(gw, f"token={hs('alice')}")) as ws:
            await send(ws, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
            assert (await recv(ws))["type"] == "subscribed"
            # pro allows one connection per user
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url(gw, f"token={hs('alice')}")):
                    pass
            assert exc.value.response.status_code == 429
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url(gw, f"token={hs('alice', exp=time.time() - 10)}")):
                pass
        assert exc.value.response.status_code == 401
        assert b"expired" in exc.value.response.body

        # anonymous connections per IP
        conns = [await connect(url(gw)) for _ in range(3)]
        try:
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url(gw)):
                    pass
            assert exc.value.response.status_code == 429
        finally:
            for c in conns:
                await c.close()


async def test_idle_connection_is_closed(settings: Settings) -> None:
    async with running_gateway(settings, idle_s=0.5) as gw, connect(url(gw)) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(ws, 5)
        assert ws.close_code == 4002


async def test_audit_lines_for_connect_auth_failure_subscribe_and_abuse(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway_ws.audit")
    async with running_gateway(settings, jwt_hs256_secret=SECRET) as gw:
        with pytest.raises(InvalidStatus):
            async with connect(url(gw, "token=garbage")):
                pass
        async with connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "ticker", "symbol": "BTC-USD"})
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            for _ in range(gw.cfg.limits.max_violations):
                await send(ws, "{")
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
        async with asyncio.timeout(5):
            while not any(getattr(r, "event", None) == "disconnect" for r in caplog.records):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "gateway_ws.audit"]
    for e in ("auth_failed", "connect", "subscribe", "abuse_close", "disconnect"):
        assert e in events, (e, events)
    failed = next(r for r in caplog.records if getattr(r, "event", None) == "auth_failed")
    assert failed.ip == "127.0.0.1" and failed.reason  # type: ignore[attr-defined]


async def test_auth_refused_for_the_user_limit_leaks_no_count(settings: Settings) -> None:
    """Issue 12: a refused auth lowered the user's count and leaked the IP's."""
    tiers = {"pro": Tier("pro", max_connections=1)}
    async with running_gateway(settings, jwt_hs256_secret=SECRET, tiers=tiers) as gw:
        async with connect(url(gw, f"token={hs('alice')}")) as first:
            await send(first, {"type": "ping"})
            await recv_until(first, lambda m: m["type"] == "pong")
            assert gw.per_user == {"alice": 1}
            async with connect(url(gw)) as anon:
                await send(anon, {"type": "ping"})
                await recv_until(anon, lambda m: m["type"] == "pong")
                assert gw.per_ip == {"127.0.0.1": 1}
                await send(anon, {"type": "auth", "token": hs("alice")})
                err = await recv_until(anon, lambda m: m["type"] == "error")
                assert err["code"] == "too_many_connections"
                with pytest.raises(ConnectionClosed):
                    while True:
                        await recv(anon)
                assert anon.close_code == 1013
            async with asyncio.timeout(5):
                while gw.per_ip:  # noqa: ASYNC110 - the server's handler ends after the close
                    await asyncio.sleep(0.02)
            assert gw.per_user == {"alice": 1}  # still counted: a second alice is refused
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url(gw, f"token={hs('alice')}")):
                    pass
            assert exc.value.response.status_code == 429
        async with asyncio.timeout(5):
            while gw.per_user:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def test_open_connection_closed_when_its_token_expires(settings: Settings) -> None:
    """Issue 12: a token's exp was never checked again on an open connection."""
    async with running_gateway(settings, jwt_hs256_secret=SECRET, heartbeat_s=0) as gw:
        async with connect(url(gw, f"token={hs('alice', exp=time.time() + 1.5)}")) as ws:
            await send(ws, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
            assert (await recv(ws))["type"] == "subscribed"
            err = await recv_until(ws, lambda m: m["type"] == "error", limit=5)
            assert err["code"] == "token_expired"
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
            assert ws.close_code == 4003
        # a token given by an auth message expires the same way
        async with connect(url(gw)) as ws:
            await send(ws, {"type": "auth", "token": hs("bob", exp=time.time() + 1.5)})
            assert (await recv(ws))["type"] == "authenticated"
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
            assert ws.close_code == 4003


async def test_token_above_the_maximum_lifetime_refused_at_upgrade(settings: Settings) -> None:
    async with running_gateway(settings, jwt_hs256_secret=SECRET, jwt_max_lifetime_s=60) as gw:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url(gw, f"token={hs('alice', exp=time.time() + 3600)}")):
                pass
        assert exc.value.response.status_code == 401
        assert b"MD_WS_JWT_MAX_LIFETIME_S" in exc.value.response.body
