"""Order-id anonymization and account-field removal (docs/security.md "Anonymization").

Order-level data can tell a reader which orders belong together (one participant's quoting), and
across days who is who. Per tier (REST) or per gateway deployment (WebSocket), order ids are:

- ``raw``: as the source sent them (the internal tier only);
- ``pseudonym``: replaced by ``o_<16 base32 chars>`` = HMAC-SHA256(``MD_ANON_SECRET``, UTC day of
  the message + order id): stable within a day, so a client can still follow an order from
  ``add`` through ``change``/``fill`` to ``delete`` and match a trade's maker/taker to the book,
  but the same order id gives unrelated pseudonyms on different days and nobody without the
  secret can reverse or link them;
- ``omit``: removed (an ``l3_snapshot`` row is ``[price, size]``, an ``l3_update`` event has no
  ``order_id``, a trade no ``maker_order_id``/``taker_order_id``).

Account-like fields (:data:`ACCOUNT_FIELDS`: account, user, client or profile ids) never leave the
platform whatever the policy: they are removed from every message's ``data`` at any depth.

Where it is applied: ``core.follower`` (every message a WebSocket gateway hands out, before
signing: :func:`install` with the gateway's base policy), the WebSocket resume reader, the
WebSocket fan-out per client tier (:class:`TierViews`, ``MD_WS_ORDER_IDS``), and the REST
gateway's ``level=3`` orderbook and trades answers with the caller's tier's policy
(:func:`policy_for`, ``MD_REST_ORDER_IDS``).

Per tier on the WebSocket gateway, yet serialized once: when every tier has the same policy the
follower applies it (nothing per client). Otherwise the follower keeps order ids (``raw``: account
fields are still removed there) and each other policy's copy of a message is made, and re-signed,
once per message and policy at delivery (:meth:`View.variant`), then shared by every client of
that policy. Only ``l3`` and ``trades`` messages carry order ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from core.errors import ConfigError
from core.settings import Settings, parse_list
from core.signing import sign, split_signed

Policy = Literal["raw", "pseudonym", "omit"]
POLICIES: tuple[Policy, ...] = ("raw", "pseudonym", "omit")
ORDER_ID_FIELDS = ("order_id", "maker_order_id", "taker_order_id")
ACCOUNT_FIELDS = frozenset(
    {
        "account",
        "account_id",
        "user",
        "user_id",
        "client_id",
        "client_oid",
        "profile_id",
        "owner",
        "trader",
        "trader_id",
        "customer_id",
        "member_id",
        "portfolio_id",
    }
)
# bytes that can only be present when there is something to do: one regex search (~1 us for
# a typical message) decides whether a message is parsed at all
_ACCOUNT_RE = re.compile(rb'"(?:' + b"|".join(f.encode() for f in sorted(ACCOUNT_FIELDS)) + rb')":')
_ANY_RE = re.compile(
    rb'"(?:'
    + b"|".join(f.encode() for f in sorted((*ACCOUNT_FIELDS, *ORDER_ID_FIELDS)))
    + rb')":|"type":"l3_snapshot"'
)
# default per REST tier: only the internal tier sees source order ids
DEFAULT_REST_POLICY: dict[str, Policy] = {"internal": "raw", "pro": "pseudonym", "*": "omit"}


def _policy(raw: str, key: str) -> Policy:
    p = raw.strip().lower()
    if p not in POLICIES:
        raise ConfigError(key, f"expected one of {', '.join(POLICIES)}, got {raw!r}")
    return p


def parse_tier_policies(raw: str, key: str = "MD_REST_ORDER_IDS") -> dict[str, Policy]:
    """``pro=pseudonym,internal=raw,*=omit`` -> a dict; ``*`` is every other tier."""
    out: dict[str, Policy] = {}
    for part in parse_list(raw):
        tier, sep, pol = part.partition("=")
        if not sep or not tier.strip():
            raise ConfigError(key, f"expected tier=policy, got {part!r}")
        out[tier.strip()] = _policy(pol, key)
    out.setdefault("*", "omit")
    return out


def policy_for(tier: str, policies: Mapping[str, Policy]) -> Policy:
    return policies.get(tier, policies.get("*", "omit"))


class Anonymizer:
    """Applies one policy to messages; pure apart from its secret."""

    def __init__(self, secret: bytes, policy: Policy) -> None:
        if policy == "pseudonym" and len(secret) < 16:
            raise ConfigError("MD_ANON_SECRET", "pseudonyms need a secret of at least 16 bytes")
        self.secret = secret
        self.policy = policy
        self._cache: dict[tuple[str, str], str] = {}
        self._marker = _ACCOUNT_RE if policy == "raw" else _ANY_RE
        # the WebSocket gateway's other tiers' policies, applied at delivery (ws_anonymizer)
        self.tiers: TierViews | None = None

    def pseudonym(self, order_id: str, day: str) -> str:
        k = (day, order_id)
        p = self._cache.get(k)
        if p is None:
            mac = hmac.new(self.secret, f"{day}\x00{order_id}".encode(), hashlib.sha256).digest()
            p = "o_" + base64.b32encode(mac[:10]).decode().lower()
            if len(self._cache) >= 100_000:  # bound: ~100 B per live order id
                self._cache.clear()
            self._cache[k] = p
        return p

    def _id(self, order_id: Any, day: str) -> Any:
        if self.policy == "pseudonym" and isinstance(order_id, str):
            return self.pseudonym(order_id, day)
        return order_id

    def _scrub(self, obj: Any, day: str) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in ACCOUNT_FIELDS:
                    continue
                if k in ORDER_ID_FIELDS and self.policy != "raw":
                    if self.policy == "omit":
                        continue
                    out[k] = self._id(v, day)
                else:
                    out[k] = self._scrub(v, day)
            return out
        if isinstance(obj, list):
            return [self._scrub(v, day) for v in obj]
        return obj

    def message(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The message as this policy lets it leave (a new dict; ``msg`` is not changed)."""
        day = str(msg.get("timestamp", ""))[:10]
        data = msg.get("data")
        if msg.get("type") == "l3_snapshot" and isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ACCOUNT_FIELDS}
            for side in ("bids", "asks"):
                rows = data.get(side)
                if isinstance(rows, list) and self.policy != "raw":
                    data[side] = [self._row(r, day) for r in rows]
            return {**msg, "data": data}
        if data is None:
            return msg
        return {**msg, "data": self._scrub(data, day)}

    def _row(self, row: Any, day: str) -> Any:
        if not isinstance(row, list) or len(row) < 3:
            return row
        return row[:2] if self.policy == "omit" else [row[0], row[1], self._id(row[2], day)]

    def raw(self, raw: bytes) -> bytes:
        """Bytes in, bytes out; the very same bytes when there is nothing to change."""
        if self._marker.search(raw) is None:
            return raw
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw  # not ours to judge: the caller's parser reports it
        if not isinstance(msg, dict):
            return raw
        out = self.message(msg)
        return raw if out == msg else orjson.dumps(out)

    def body(self, raw: bytes) -> bytes:
        """A REST body: an l3 book (``bids``/``asks`` rows) or ``{"trades": [...]}``."""
        ids = self.policy != "raw" and (_ANY_RE.search(raw) is not None or b'"bids"' in raw)
        if not ids and _ACCOUNT_RE.search(raw) is None:
            return raw
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            return raw
        day = str(doc.get("timestamp", ""))[:10]
        out = dict(doc)
        for side in ("bids", "asks"):
            if isinstance(out.get(side), list) and self.policy != "raw":
                out[side] = [self._row(r, day) for r in out[side]]
        for k, v in list(out.items()):
            if k not in ("bids", "asks"):
                out[k] = self._scrub(v, day) if isinstance(v, list | dict) else v
        for k in ACCOUNT_FIELDS & out.keys():
            del out[k]
        return orjson.dumps(out)


def secret_from(s: Settings) -> bytes:
    return s.get("MD_ANON_SECRET", str, "").encode()


def ws_policies(s: Settings) -> dict[str, Policy]:
    """Tier name (``*``: any other, ``anonymous`` for clients without a token) -> policy, from
    ``MD_WS_ORDER_IDS``: ``tier=policy,...`` as ``MD_REST_ORDER_IDS``, or one policy for every
    tier. Default as REST: :data:`DEFAULT_REST_POLICY` with ``MD_ANON_SECRET``, else ``raw``."""
    raw = s.get("MD_WS_ORDER_IDS", str, "").strip()
    if "=" in raw:
        return parse_tier_policies(raw, "MD_WS_ORDER_IDS")
    if raw:
        return {"*": _policy(raw, "MD_WS_ORDER_IDS")}
    return dict(DEFAULT_REST_POLICY) if secret_from(s) else {"*": "raw"}


def ws_anonymizer(s: Settings) -> Anonymizer:
    """The WebSocket gateway's base anonymizer, for the follower (:func:`install`): the one
    policy of every tier, or ``raw`` with :attr:`Anonymizer.tiers` making the other policies'
    copies at delivery (:class:`TierViews`)."""
    secret = secret_from(s)
    policies = ws_policies(s)
    distinct = set(policies.values())
    base: Policy = distinct.pop() if len(distinct) == 1 else "raw"
    a = Anonymizer(secret, base)
    if any(p != base for p in policies.values()):
        a.tiers = TierViews(secret, policies, base)
    return a


# copies kept per policy: the messages in flight to that policy's clients, with their frames
# (~4 x 300 B for an update); cleared when either bound is passed: <= ~4 x 8 MiB per policy
# whatever the messages' sizes (an l3 snapshot of a deep book is hundreds of KiB)
VIEW_CACHE_MAX = 4096
VIEW_CACHE_BYTES = 8 * 1024 * 1024


class View:
    """One policy's copies of the base messages: made and signed once, shared by its clients."""

    def __init__(self, anonymizer: Anonymizer) -> None:
        self.anonymizer = anonymizer
        # base bytes -> (the copy, its encoding cache) or None when the policy changes nothing;
        # the cache list is the fan-out's per-message [msgpack, json frame, msgpack frame]
        self.cache: dict[bytes, tuple[bytes, list[bytes | None]] | None] = {}
        self.cached_bytes = 0  # of the keys: the copies and frames are about as big again

    def variant(self, raw: bytes) -> tuple[bytes, list[bytes | None]] | None:
        """This policy's copy of ``raw`` (re-signed when ``raw`` was signed), None if the same."""
        try:
            return self.cache[raw]
        except KeyError:
            pass
        parts = split_signed(raw)
        body = raw if parts is None else parts[0]
        out = self.anonymizer.raw(body)
        hit: tuple[bytes, list[bytes | None]] | None = None
        if out is not body:
            hit = ((out if parts is None else sign(out)), [None, None, None])
        if len(self.cache) >= VIEW_CACHE_MAX or self.cached_bytes >= VIEW_CACHE_BYTES:
            self.cache.clear()
            self.cached_bytes = 0
        self.cache[raw] = hit
        self.cached_bytes += len(raw)
        return hit


class TierViews:
    """Tier name -> the :class:`View` of its policy, None for the base policy's tiers."""

    def __init__(self, secret: bytes, policies: Mapping[str, Policy], base: Policy) -> None:
        views = {p: View(Anonymizer(secret, p)) for p in set(policies.values()) if p != base}
        self.policies = dict(policies)
        self._by_tier = {t: views.get(p) for t, p in policies.items()}
        self._other = self._by_tier.get("*")

    def for_tier(self, tier: str) -> View | None:
        return self._by_tier.get(tier, self._other)


def rest_anonymizers(s: Settings) -> dict[str, Anonymizer]:
    """Tier name (``*``: any other) -> its anonymizer, from ``MD_REST_ORDER_IDS`` (default
    :data:`DEFAULT_REST_POLICY` when ``MD_ANON_SECRET`` is set, else ``raw`` for every tier)."""
    secret = secret_from(s)
    raw = s.get("MD_REST_ORDER_IDS", str, "")
    if raw:
        policies = parse_tier_policies(raw)
    else:
        policies = dict(DEFAULT_REST_POLICY) if secret else {"*": "raw"}
    return {tier: Anonymizer(secret, p) for tier, p in policies.items()}


def for_tier(anonymizers: Mapping[str, Anonymizer], tier: str) -> Anonymizer:
    return anonymizers.get(tier) or anonymizers["*"]


# ------------------------------------------------------------------ the process's anonymizer

_installed: Anonymizer | None = None


def install(a: Anonymizer | None) -> None:
    """Apply ``a`` to every message :func:`apply` sees in this process (None: stop)."""
    global _installed
    _installed = a


def apply(raw: bytes) -> bytes:
    a = _installed
    return raw if a is None else a.raw(raw)


def installed_tiers() -> TierViews | None:
    """The per-tier views of the installed anonymizer (None: one policy for everyone)."""
    a = _installed
    return None if a is None else a.tiers
