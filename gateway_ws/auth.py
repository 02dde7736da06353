"""JWT authentication (RFC 7519) for WebSocket clients: HS256 and/or RS256.

A token is accepted in the ``token`` query parameter of the upgrade request or in an
``{"type":"auth","token":...}`` message. Claims used: ``sub`` (the user, for per-user
connection limits and audit lines), ``tier`` (limits, default ``MD_WS_DEFAULT_TIER``),
``exp``/``nbf`` (checked by PyJWT, and ``exp`` again on open connections by the fan-out
core), ``aud``/``iss`` when configured; a token living longer than
``MD_WS_JWT_MAX_LIFETIME_S`` (``exp - iat``, or ``exp - now`` without ``iat``) is refused. The algorithm list is
fixed by which keys are configured, never taken from the token header ("alg confusion").
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from gateway_ws.config import WsConfig
from gateway_ws.protocol import Principal, ProtocolError


class Authenticator:
    def __init__(self, cfg: WsConfig) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg.jwt_hs256_secret or cfg.jwt_rs256_public_key)

    def verify(self, token: str, now: float | None = None) -> Principal:
        """Principal of a valid token; ProtocolError ``auth_failed`` naming the reason otherwise."""
        if not self.enabled:
            raise ProtocolError(
                "auth_unavailable", "authentication is not configured on this gateway"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ProtocolError("auth_failed", f"malformed token: {exc}") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.cfg.jwt_hs256_secret:
            key = self.cfg.jwt_hs256_secret
        elif alg == "RS256" and self.cfg.jwt_rs256_public_key:
            key = self.cfg.jwt_rs256_public_key
        else:
            raise ProtocolError("auth_failed", f"algorithm {alg!r} not accepted")
        opts: Any = {"require": ["exp", "sub"]}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.cfg.jwt_audience,
                issuer=self.cfg.jwt_issuer,
                options=opts,
            )
        except jwt.ExpiredSignatureError:
            raise ProtocolError("auth_failed", "token expired") from None
        except jwt.PyJWTError as exc:
            raise ProtocolError("auth_failed", f"invalid token: {exc}") from None
        exp = float(claims["exp"])
        now = time.time() if now is None else now
        iat = claims.get("iat")
        start = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else now
        lifetime = exp - min(start, now)
        if lifetime > self.cfg.jwt_max_lifetime_s:
            raise ProtocolError(
                "auth_failed",
                f"token lifetime {lifetime:.0f} s above the maximum of "
                f"{self.cfg.jwt_max_lifetime_s:.0f} s (MD_WS_JWT_MAX_LIFETIME_S)",
            )
        tier_name = claims.get("tier") or self.cfg.default_tier
        tier = self.cfg.tiers.get(str(tier_name))
        if tier is None:
            raise ProtocolError("auth_failed", f"unknown tier {tier_name!r}")
        return Principal(user=str(claims["sub"]), tier=tier, expires_at=exp)
