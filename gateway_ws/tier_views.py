"""Order ids per client tier on the WebSocket gateway (issue 12, docs/security.md "Anonymization").

``MD_WS_ORDER_IDS`` gives each tier a policy (``raw``, ``pseudonym``, ``omit``) as REST does.
When the tiers differ, the follower keeps order ids and :class:`TieredFanoutCore` hands each
client its tier's copy (:class:`core.anonymize.View`: made and re-signed once per message and
policy, then shared like any frame). The tier is read at each delivery, so an ``auth`` that
changes a connection's tier changes what its next message shows.

Only ``l3`` and ``trades`` carry order ids: their subscriptions leave the core's shared-frame
fast path (every delivery goes through :meth:`FanoutCore._send`, where the copy is chosen);
every other channel keeps it. With one policy for every tier nothing here runs per client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.anonymize import installed_tiers
from gateway_ws.fanout import Conn, FanoutCore, Sub
from gateway_ws.protocol import SubRequest

ORDER_ID_CHANNELS = frozenset({"l3", "trades"})


def session_tier(c: Conn) -> str:
    """The tier of a shell connection (gateway_ws.client.Client): its session's principal."""
    return str(c.session.principal.tier.name)  # type: ignore[attr-defined]


class TieredFanoutCore(FanoutCore):
    """:class:`FanoutCore` whose deliveries carry the receiving tier's order-id policy.

    The views come from the process's installed anonymizer (``core.anonymize.install``, done by
    the gateway at start), read when used, so building the hub before that is fine."""

    def __init__(
        self, *args: Any, tier_of: Callable[[Conn], str] = session_tier, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.tier_of = tier_of

    def subscribe(self, c: Conn, req: SubRequest) -> Sub:
        sub = super().subscribe(c, req)
        if req.channel in ORDER_ID_CHANNELS and installed_tiers() is not None:
            sub.fast = False
        return sub

    def _send(self, c: Conn, raw: bytes, cache: list[bytes | None], limit: int) -> bool:
        views = installed_tiers()
        if views is not None:
            view = views.for_tier(self.tier_of(c))
            if view is not None:
                hit = view.variant(raw)
                if hit is not None:
                    raw, cache = hit
        return super()._send(c, raw, cache, limit)
