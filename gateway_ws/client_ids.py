"""Resume by ``client_id``: a client's subscription set, kept where every gateway process reads it.

A client that names itself (``client_id`` in the URL query, or on a ``subscribe`` or ``resume``
request) has its subscription set saved in Redis after every change, under
``<prefix>:client:<owner>:<client_id>`` (:meth:`core.cache_keys.CacheKeys.client`). After a
disconnect it sends ``{"type":"resume","client_id":..,"since":..}`` to *any* gateway process,
which reads the set back and subscribes to every target again with ``since`` (docs/websocket.md
"Resume by client id").

Two layers, like the rest of the gateway: pure functions (validate an id, a subscription set to
bytes and back, with everything read from Redis checked again, since another version or a person
with ``redis-cli`` may have written it) and :class:`ClientStore`, the Redis I/O.

The owner is ``anon`` for anonymous clients and the fingerprint of the token's subject for the
others, so one user cannot read or overwrite another user's set by guessing its ``client_id``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.security import fingerprint

log = logging.getLogger(__name__)

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Options a stored target keeps. Resume fields (since_seq, since, epoch) are per request, never
# stored: the resume brings its own ``since``.
STORED_OPTIONS = ("depth", "limit", "interval_ms", "currencies")
# A set is at most a tier's max_subscriptions targets (500 for "pro", ~60 B each: ~30 KiB);
# anything longer in Redis was not written by a gateway and is cut here.
MAX_STORED = 1000


def check_client_id(raw: object) -> str:
    """The id if it is 1-64 characters of ``A-Z a-z 0-9 . _ : -``; ValueError naming the rule."""
    if not isinstance(raw, str) or not CLIENT_ID_RE.match(raw):
        raise ValueError("'client_id' is 1-64 characters of letters, digits and . _ : -")
    return raw


def owner_of(user: str | None) -> str:
    """The key part that scopes a client id: ``anon`` or the user's fingerprint."""
    return "anon" if user is None else "u" + fingerprint(user)


def encode_set(targets: Iterable[dict[str, Any]]) -> bytes:
    """The subscription set as stored: ``{"subs": [{"channel", "symbol", options...}]}``."""
    return orjson.dumps({"subs": list(targets)})


def decode_set(raw: bytes | str | None) -> list[dict[str, Any]]:
    """The stored targets, each ``{"channel": str, "symbol": str, <STORED_OPTIONS>...}``.

    Entries that are not of that shape are skipped (logged): the session validates every target
    again (channel, symbol, tier, option ranges) before it subscribes, so a bad entry can at
    worst produce an ``error`` for that target, never a subscription the client could not ask
    for itself."""
    if not raw:
        return []
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("stored client set is not JSON: ignored")
        return []
    subs = doc.get("subs") if isinstance(doc, dict) else None
    if not isinstance(subs, list):
        log.warning("stored client set has no 'subs' list: ignored")
        return []
    out: list[dict[str, Any]] = []
    for item in subs[:MAX_STORED]:
        if (
            isinstance(item, dict)
            and isinstance(item.get("channel"), str)
            and isinstance(item.get("symbol"), str)
        ):
            out.append(
                {
                    "channel": item["channel"],
                    "symbol": item["symbol"],
                    **{k: item[k] for k in STORED_OPTIONS if item.get(k) is not None},
                }
            )
        else:
            log.warning("stored client target malformed: skipped", extra={"entry": repr(item)})
    return out


class ClientStore:
    """The Redis side: one string per client, written whole after each change, expiring ``ttl_s``
    after the last write (or the last disconnect) so abandoned ids do not accumulate."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: float) -> None:
        self.redis = redis
        self.keys = CacheKeys(prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def save(self, owner: str, client_id: str, targets: list[dict[str, Any]]) -> None:
        await self.redis.set(
            self.keys.client(owner, client_id), encode_set(targets), px=self.ttl_ms
        )

    async def load(self, owner: str, client_id: str) -> list[dict[str, Any]] | None:
        """The stored targets; None when the id has no stored set (never seen, or expired)."""
        raw = await self.redis.get(self.keys.client(owner, client_id))
        return None if raw is None else decode_set(raw)

    async def touch(self, owner: str, client_id: str) -> None:
        """Restart the expiry (on disconnect: the set must outlive the connection by ``ttl_s``)."""
        await self.redis.pexpire(self.keys.client(owner, client_id), self.ttl_ms)
