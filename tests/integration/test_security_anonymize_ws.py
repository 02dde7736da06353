"""A WebSocket gateway with MD_ANON_SECRET sends l3 with order ids per client tier (internal: the
source's, pro: per-day pseudonyms, anonymous: none), never an account field, and each tier's copy
signed (issue 12), through the real Kafka and follower."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from core.anonymize import Anonymizer
from core.settings import Settings
from core.signing import Signer, Verifier, write_keypair
from gateway_ws.config import DEFAULT_TIERS
from gateway_ws.protocol import Tier
from tests.integration.ws_helpers import (
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration
SECRET = "an-anonymization-secret-0123456789"
TS = "2026-12-06T10:00:00.000000Z"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(tier: str) -> str:
    claims = {"sub": f"u-{tier}", "tier": tier, "exp": int(time.time() + 60)}
    return jwt.encode(claims, JWT_SECRET, "HS256")


def _msg(type_: str, seq: int, data: dict[str, object]) -> bytes:
    return orjson.dumps(
        {
            "type": type_,
            "channel": "l3",
            "symbol": "BTC-USD",
            "seq": seq,
            "epoch": 1,
            "timestamp": TS,
            "data": data,
        }
    )


async def _recv_type(ws: ClientConnection, type_: str) -> bytes:
    """The next message of this type, as the bytes received (its signature covers them)."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str)
        if orjson.loads(raw)["type"] == type_:
            return raw.encode()


async def test_l3_order_ids_per_tier(settings: Settings, tmp_path: Path) -> None:
    key, _ = write_keypair(str(tmp_path / "keys"))
    s = dataclasses.replace(
        settings,
        extra={**settings.extra, "MD_ANON_SECRET": SECRET, "MD_SIGNING_KEY": str(key)},
    )  # MD_WS_ORDER_IDS unset: internal=raw, pro=pseudonym, *=omit (as REST)
    snap = _msg(
        "l3_snapshot", 1, {"bids": [["100", "1", "ord-A"]], "asks": [["101", "2", "ord-B"]]}
    )
    upd = _msg(
        "l3_update",
        2,
        {
            "events": [
                {
                    "op": "change",
                    "order_id": "ord-A",
                    "side": "buy",
                    "price": "100",
                    "size": "3",
                    "account_id": "acct-9",
                }
            ]
        },
    )
    tiers = {**DEFAULT_TIERS, "internal": Tier("internal")}
    got: dict[str, list[bytes]] = {}
    async with Feed(s) as feed:
        await feed.raw(feed.t.snapshot, snap, "l3:BTC-USD")
        async with running_gateway(s, jwt_hs256_secret=JWT_SECRET, tiers=tiers) as gw:
            queries = {"anonymous": "", "pro": "token=" + token("pro")}
            queries["internal"] = "token=" + token("internal")
            async with (
                connect(url(gw, queries["anonymous"])) as anon,
                connect(url(gw, queries["pro"])) as pro,
                connect(url(gw, queries["internal"])) as internal,
            ):
                socks = {"anonymous": anon, "pro": pro, "internal": internal}
                for tier, ws in socks.items():
                    await send(ws, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
                    got[tier] = [await _recv_type(ws, "l3_snapshot")]
                await feed.raw(feed.t.stream("l3"), upd, "BTC-USD")
                for tier, ws in socks.items():
                    got[tier].append(await _recv_type(ws, "l3_update"))
    signer = Signer.from_pem(key.read_bytes())
    verifier = Verifier([signer.public_key])
    msgs = {t: [orjson.loads(r) for r in raws] for t, raws in got.items()}
    for raws in got.values():
        assert all(verifier.verify(r) is None for r in raws)  # each tier's copy is signed
        assert all(b"acct-9" not in r and b"account_id" not in r for r in raws)
    p = Anonymizer(SECRET.encode(), "pseudonym").pseudonym("ord-A", "2026-12-06")
    upd_of = {t: next(m for m in ms if m["type"] == "l3_update") for t, ms in msgs.items()}
    snap_of = {t: next(m for m in ms if m["type"] == "l3_snapshot") for t, ms in msgs.items()}
    assert upd_of["internal"]["data"]["events"][0]["order_id"] == "ord-A"
    assert upd_of["pro"]["data"]["events"][0]["order_id"] == p
    assert "order_id" not in upd_of["anonymous"]["data"]["events"][0]
    assert snap_of["internal"]["data"]["bids"][0] == ["100", "1", "ord-A"]
    assert snap_of["pro"]["data"]["bids"][0] == ["100", "1", p]
    assert snap_of["anonymous"]["data"]["bids"][0] == ["100", "1"]
    assert all(b"ord-" not in r for t in ("pro", "anonymous") for r in got[t])
