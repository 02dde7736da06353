"""JWT verification of the WebSocket gateway: lifetime bound and the expiry it hands on."""

from __future__ import annotations

import time

import jwt
import pytest

from gateway_ws.auth import Authenticator
from gateway_ws.config import WsConfig
from gateway_ws.protocol import ProtocolError

SECRET = "s" * 32


def token(**claims: object) -> str:
    return jwt.encode({"sub": "alice", **claims}, SECRET, "HS256")


def auth(max_lifetime: float = 3600) -> Authenticator:
    return Authenticator(WsConfig(jwt_hs256_secret=SECRET, jwt_max_lifetime_s=max_lifetime))


def test_principal_carries_the_tokens_exp() -> None:
    now = int(time.time())  # PyJWT checks exp/iat against the real clock too
    p = auth().verify(token(exp=now + 60), now=now)
    assert p.user == "alice" and p.expires_at == now + 60


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 3601},  # no iat: from now
        {"exp": 600, "iat": -3100},  # issued long ago, lifetime 3700 s
    ],
)
def test_tokens_living_longer_than_the_maximum_are_refused(claims: dict[str, int]) -> None:
    """Issue 12: no maximum token lifetime existed (a year-long token was fine)."""
    now = int(time.time())
    with pytest.raises(ProtocolError, match="MD_WS_JWT_MAX_LIFETIME_S") as exc:
        auth().verify(token(**{k: now + v for k, v in claims.items()}), now=now)
    assert exc.value.code == "auth_failed"


def test_token_within_the_maximum_lifetime_is_accepted() -> None:
    now = int(time.time())
    assert auth().verify(token(exp=now + 3000, iat=now - 500), now=now).user == "alice"
