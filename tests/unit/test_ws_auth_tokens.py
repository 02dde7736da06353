"""JWT verification of the WebSocket gateway: lifetime bound and the expiry it hands on."""

from __future__ import annotations

import time

import jwt
import pytest

from gateway_ws.auth import Authenticator
from gateway_ws.config import WsConfig
from gateway_ws.protocol import ProtocolError

SECRET = "s" * 32
NOW = int(time.time())  # PyJWT checks exp/iat against the real clock too


def token(**claims: object) -> str:
    return jwt.encode({"sub": "alice", **claims}, SECRET, "HS256")


def auth(max_lifetime: float = 3600) -> Authenticator:
    return Authenticator(WsConfig(jwt_hs256_secret=SECRET, jwt_max_lifetime_s=max_lifetime))


def test_principal_carries_the_tokens_exp() -> None:
    p = auth().verify(token(exp=NOW + 60), now=NOW)
    assert p.user == "alice" and p.expires_at == NOW + 60


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW + 3601},  # no iat: from now
        {"exp": NOW + 600, "iat": NOW - 3100},  # issued long ago, lifetime 3700 s
    ],
)
def test_tokens_living_longer_than_the_maximum_are_refused(claims: dict[str, int]) -> None:
    """Issue 12: no maximum token lifetime existed (a year-long token was fine)."""
    with pytest.raises(ProtocolError, match="MD_WS_JWT_MAX_LIFETIME_S") as exc:
        auth().verify(token(**claims), now=NOW)
    assert exc.value.code == "auth_failed"


def test_token_within_the_maximum_lifetime_is_accepted() -> None:
    assert auth().verify(token(exp=NOW + 3000, iat=NOW - 500), now=NOW).user == "alice"
