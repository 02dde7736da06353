"""Who may replay what, and what a replayed message shows (docs/websocket.md "Replay", issue 12).

Stored history is no wider door than the live stream: the replay server applies the live
WebSocket gateway's client rules, from the same settings, so one token works on both and an
operator configures entitlements once:

- identity: a JWT (``MD_WS_JWT_HS256_SECRET`` / ``MD_WS_JWT_RS256_PUBLIC_KEY``, ``MD_WS_TIERS``),
  verified by the live gateway's :class:`gateway_ws.auth.Authenticator`, in the ``token`` query
  parameter of the upgrade or an ``{"type":"auth","token":...}`` message; without one a client is
  anonymous;
- channels: a tier's ``channels`` (``MD_WS_ANON_CHANNELS`` for anonymous clients), so ``l3``
  history is not readable by whoever may not subscribe to live ``l3``; a token's ``exp`` ends
  the replays it started;
- order ids: the tier's policy of ``MD_WS_ORDER_IDS`` (``raw``, ``pseudonym``, ``omit``), and
  account fields never leave (:mod:`core.anonymize`); the stored bytes are the aggregator's,
  before any gateway applied a policy;
- signatures: with ``MD_SIGNING_KEY`` every replayed data message is signed as live ones are
  (:mod:`core.signing`), after the policy, so a client verifies what it received;
- connections: anonymous ones per address (``MD_WS_MAX_CONN_PER_IP``), a user's per its tier's
  ``max_connections`` (:class:`ConnectionLimits`), per replay process as on the live gateway.

Pure apart from the keys it holds: the server calls :meth:`ReplayAccess.check` per request and
:meth:`ReplayAccess.view` per replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.anonymize import Anonymizer, Policy, policy_for, secret_from, ws_policies
from core.settings import Settings
from core.signing import Signer, split_signed
from gateway_ws.auth import Authenticator
from gateway_ws.config import WsConfig
from gateway_ws.protocol import Principal, ProtocolError


@dataclass
class ReplayAccess:
    auth: Authenticator
    anonymous: Principal
    policies: dict[str, Policy]
    secret: bytes
    signer: Signer | None = None
    max_conn_per_ip: int = 200
    _anonymizers: dict[Policy, Anonymizer] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, s: Settings) -> ReplayAccess:
        ws = WsConfig.from_settings(s)  # the live gateway's client settings, checked as there
        return cls(
            auth=Authenticator(ws),
            anonymous=Principal(None, ws.anonymous_tier),
            policies=ws_policies(s),
            secret=secret_from(s),
            signer=Signer.from_settings(s),
            max_conn_per_ip=ws.max_conn_per_ip,
        )

    @property
    def auth_enabled(self) -> bool:
        return self.auth.enabled

    def verify(self, token: object) -> Principal:
        """The principal of a valid token; :class:`ProtocolError` naming the reason otherwise."""
        if not self.auth.enabled:
            raise ProtocolError("auth_unavailable", "authentication is not configured here")
        if not isinstance(token, str) or not token:
            raise ProtocolError("auth_failed", "'token' must be a JWT string")
        return self.auth.verify(token)

    def check(self, principal: Principal, channel: str, now: float | None = None) -> None:
        """May ``principal`` replay ``channel`` now? The live gateway's codes: ``auth_required``
        (anonymous, channel not anonymous), ``forbidden`` (not in the tier), ``token_expired``."""
        if expired(principal, now):
            raise ProtocolError("token_expired", "the token expired")
        allowed = principal.tier.channels
        if allowed is not None and channel not in allowed:
            code = "auth_required" if principal.anonymous else "forbidden"
            raise ProtocolError(
                code, f"channel {channel!r} is not available to tier {principal.tier.name!r}"
            )

    def view(self, principal: Principal) -> Callable[[bytes], bytes]:
        """Stored bytes -> the bytes this principal receives: its tier's order-id policy, no
        account fields, signed when a key is configured. The very same bytes when nothing applies
        (no policy to apply, no key)."""
        policy = policy_for(principal.tier.name, self.policies)
        a = self._anonymizers.get(policy)
        if a is None:
            a = self._anonymizers[policy] = Anonymizer(self.secret, policy)
        signer = self.signer

        def apply(raw: bytes) -> bytes:
            parts = split_signed(raw)
            base = raw if parts is None else parts[0]
            body = a.raw(base)
            if body is base and (parts is not None or signer is None):
                return raw  # unchanged, and signed already or nothing to sign with
            return body if signer is None else signer.sign(body)

        return apply


def expired(principal: Principal, now: float | None = None) -> bool:
    exp = principal.expires_at
    return exp is not None and (time.time() if now is None else now) >= exp


class ConnectionLimits:
    """Open connections per anonymous address and per user, the live gateway's two limits.

    ``refusal`` says why a new connection (or an ``auth`` that moves one to a user) is refused,
    None when it may go ahead; ``add``/``remove`` keep the counts, ``move`` re-keys a connection
    whose principal changed. Pure bookkeeping: the server calls it on its event loop."""

    def __init__(self, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self.per_ip: dict[str, int] = {}
        self.per_user: dict[str, int] = {}

    def _slot(self, p: Principal, ip: str) -> tuple[dict[str, int], str]:
        return (self.per_ip, ip) if p.user is None else (self.per_user, p.user)

    def refusal(self, p: Principal, ip: str) -> str | None:
        table, key = self._slot(p, ip)
        limit = self.max_per_ip if p.user is None else p.tier.max_connections
        if table.get(key, 0) < limit:
            return None
        return (
            "too many connections from this address"
            if p.user is None
            else "too many connections for this user"
        )

    def add(self, p: Principal, ip: str) -> None:
        table, key = self._slot(p, ip)
        table[key] = table.get(key, 0) + 1

    def remove(self, p: Principal, ip: str) -> None:
        table, key = self._slot(p, ip)
        n = table.get(key, 0) - 1
        if n > 0:
            table[key] = n
        else:
            table.pop(key, None)

    def move(self, old: Principal, new: Principal, ip: str) -> str | None:
        """Re-key a connection from ``old`` to ``new`` (an ``auth``); the refusal, if any,
        leaves the counts as they were."""
        if self._slot(old, ip) == self._slot(new, ip):
            return None
        why = self.refusal(new, ip)
        if why is None:
            self.remove(old, ip)
            self.add(new, ip)
        return why
