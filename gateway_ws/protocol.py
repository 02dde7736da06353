"""The client protocol of the WebSocket gateway, sans I/O (docs/websocket.md).

A :class:`Session` is one client's request side: text in through :meth:`Session.receive_data`,
replies (acks, errors) out through :meth:`Session.data_to_send`, and what the transport must
do through :meth:`Session.events_received` (:class:`Subscribe`, :class:`Unsubscribe`,
:class:`Close`). It owns the subscription set, the limits of the client's tier and the count
of violations; it owns no market data (that is the hub's) and does no I/O, so the tests drive
it with plain calls and an explicit clock, the shape of ``websockets.protocol.Protocol``.

Rules, all here:

- a request is one JSON object with a ``type``: ``subscribe``, ``unsubscribe``, ``auth``,
  ``ping``, ``resume``; anything else is an ``unknown_type`` error;
- a ``client_id`` (URL query, or on ``subscribe``/``resume``) names the client across
  connections: the transport stores the subscription set of a named session
  (:meth:`Session.stored_targets`, gateway_ws/client_ids.py), and ``resume`` with a ``since``
  asks for it back (:class:`ResumeClient`, answered by :meth:`Session.resume_with`);
- subscribe/unsubscribe take ``channel`` + ``symbol`` or ``channels: ["l2:BTC-USD", ...]``;
  each target is validated on its own, so one bad target does not void the others;
- every error is ``{"type":"error","code":..,"message":..}`` and the session stays open;
  errors are violations, and ``max_violations`` of them inside ``violation_window`` seconds
  make the client abusive: the session asks to close with 1008 (RFC 6455 §7.4.1 "policy
  violation"). Requests above the client's rate are refused (``rate_limited``) the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.channels import DATA_CHANNELS, error_message
from core.codec import iso_from_ns
from core.errors import CodecError, SymbolError
from core.symbols import normalize_symbol
from gateway_ws.client_ids import STORED_OPTIONS, check_client_id
from gateway_ws.errors import GatewayWsError
from gateway_ws.rates import no_path_message

Key = tuple[str, str]  # (channel, symbol); the status channel uses symbol "*" for "all"

STATUS = "status"
BOOK_CHANNELS = ("l2", "l3")
CONFLATABLE = ("l2", "ticker", "stats")  # plus candles_*: whole-value or mergeable messages
ALL_CHANNELS = (*DATA_CHANNELS, STATUS)

# close codes (RFC 6455 §7.4.1 and the application range 4000-4999, docs/websocket.md)
CLOSE_POLICY = 1008  # abusive client: repeated violations
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013  # server overloaded / connection limit
CLOSE_SLOW = 4001  # slow consumer on a channel that cannot be conflated
CLOSE_IDLE = 4002  # no subscription and no request for too long
CLOSE_AUTH = 4003  # authentication required / token expired

_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_UNIX_S = re.compile(r"^\d+(?:\.\d+)?$")
# Unix seconds above this (year 5138) are milliseconds or nanoseconds sent by mistake
_MAX_UNIX_S = 1e11


class ProtocolError(GatewayWsError):
    """A client request we refuse; ``code`` is stable, the message is for humans."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Tier:
    """Limits of a class of clients (anonymous, or a JWT's ``tier`` claim)."""

    name: str
    max_subscriptions: int = 50
    max_connections: int = 20  # per user (per IP for anonymous), per gateway process
    rate: float = 20.0  # client requests per second, sustained
    burst: int = 40  # token-bucket depth
    channels: frozenset[str] | None = None  # None = every channel


@dataclass(frozen=True, slots=True)
class Principal:
    user: str | None  # None: anonymous
    tier: Tier
    expires_at: float | None = None  # the token's exp (Unix s): enforced on open connections

    @property
    def anonymous(self) -> bool:
        return self.user is None


@dataclass(frozen=True, slots=True)
class SubRequest:
    channel: str
    symbol: str
    since_seq: int | None = None
    since_ns: int | None = None
    epoch: int | None = None
    depth: int | None = None
    interval_ms: int | None = None
    currencies: tuple[str, ...] = ()
    limit: int | None = None

    @property
    def key(self) -> Key:
        return (self.channel, self.symbol)

    @property
    def name(self) -> str:
        return f"{self.channel}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class Subscribe:
    requests: tuple[SubRequest, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The session switched to ``principal``; the transport may refuse it (connection limit)
    and then puts ``previous`` back with :meth:`Session.revert_auth`."""

    principal: Principal
    previous: Principal


@dataclass(frozen=True, slots=True)
class Bind:
    """The session took a ``client_id``: the transport stores its subscription set from now on."""

    client_id: str


@dataclass(frozen=True, slots=True)
class ResumeClient:
    """``resume``: the transport reads the client's stored set and calls
    :meth:`Session.resume_with` with it (None when nothing is stored under the id)."""

    client_id: str
    since_ns: int
    req_id: Any = None


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = Subscribe | Unsubscribe | Authenticated | Bind | ResumeClient | Close


@dataclass(slots=True)
class Limits:
    """Per-session bounds that do not depend on the tier."""

    max_frame: int = 16 * 1024  # a subscribe of 200 targets is ~6 KiB; more is not a request
    max_violations: int = 10
    violation_window: float = 60.0
    max_targets_per_request: int = 200
    max_depth: int = 1000
    max_trades: int = 100
    min_interval_ms: int = 100
    max_interval_ms: int = 60_000
    max_currencies: int = 5


def parse_interval(raw: object) -> int:
    """``"5s"``, ``"250ms"``, ``"1m"`` or a number of seconds -> milliseconds."""
    if isinstance(raw, bool):
        raise ValueError("interval must be a string like '5s' or a number of seconds")
    if isinstance(raw, int | float):
        return int(raw * 1000)
    if isinstance(raw, str):
        m = _INTERVAL.match(raw.strip())
        if m:
            v, unit = float(m.group(1)), m.group(2)
            return int(v * {"ms": 1, "s": 1000, "m": 60_000}[unit])
    raise ValueError("interval must be a string like '5s' or '250ms', or a number of seconds")


def parse_since(raw: object, ns_from_iso: Callable[[str], int]) -> int:
    """A start time as ns since the epoch: an ISO-8601 string, or Unix seconds as a number or a
    string of digits (``1796557200``, ``1796557200.25``)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError("'since' is an ISO-8601 time or Unix seconds")
    if isinstance(raw, str) and not _UNIX_S.match(raw.strip()):
        try:
            return ns_from_iso(raw)
        except (CodecError, ValueError):
            raise ValueError(f"bad 'since' timestamp {raw!r}") from None
    secs = float(raw)
    if not math.isfinite(secs) or not 0 <= secs < _MAX_UNIX_S:
        raise ValueError(f"'since' {raw!r} is not Unix seconds (milliseconds sent by mistake?)")
    whole, _, frac = str(raw).strip().partition(".")
    if isinstance(raw, float):
        return round(raw * 1e9)
    return int(whole) * 10**9 + int((frac + "0" * 9)[:9] or 0)


@dataclass(slots=True)
class Session:
    """One client's protocol state; see the module docstring."""

    principal: Principal
    is_symbol: Callable[[str], bool]
    ns_from_iso: Callable[[str], int]
    encode: Callable[[dict[str, Any]], bytes] = orjson.dumps
    limits: Limits = field(default_factory=Limits)
    verify_token: Callable[[str], Principal] | None = None
    client_id: str | None = None  # set by the URL query, or by the first request naming one
    # (quote, currency) -> whether the gateway follows tickers that convert (gateway_ws/rates.py)
    can_convert: Callable[[str, str], bool] | None = None
    on_error: Callable[[str], None] | None = None  # told each error code (metrics)
    now: float = 0.0
    subscriptions: dict[Key, SubRequest] = field(default_factory=dict)
    violations: list[float] = field(default_factory=list)  # at most max_violations
    closing: Close | None = None
    last_request: float = 0.0
    _tokens: float = -1.0
    _stamp: float = 0.0
    _out: list[bytes] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)

    # ----------------------------------------------------------------- I/O surface

    def receive_data(self, data: str | bytes, now: float) -> None:
        """One WebSocket message from the client."""
        if self.closing is not None:
            return  # discard everything once we decided to close
        self.now = self.last_request = now
        req_id: Any = None
        try:
            if len(data) > self.limits.max_frame:
                raise ProtocolError(
                    "frame_too_large",
                    f"message of {len(data)} bytes over the limit of {self.limits.max_frame}",
                )
            if not self._take_token(now):
                raise ProtocolError(
                    "rate_limited", f"more than {self.principal.tier.rate:g} requests per second"
                )
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError("bad_json", f"malformed JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise ProtocolError("bad_request", "a request is a JSON object with a 'type'")
            req_id = msg.get("id")
            typ = msg.get("type")
            if typ == "subscribe":
                self._subscribe(msg, req_id)
            elif typ == "unsubscribe":
                self._unsubscribe(msg, req_id)
            elif typ == "auth":
                self._auth(msg.get("token"), req_id)
            elif typ == "resume":
                self._resume(msg, req_id)
            elif typ == "ping":
                self._send({"type": "pong", **({"id": req_id} if req_id is not None else {})})
            else:
                raise ProtocolError(
                    "unknown_type",
                    f"unknown request type {typ!r}; "
                    "expected subscribe, unsubscribe, auth, ping or resume",
                )
        except ProtocolError as exc:
            self.error(exc.code, exc.message, id=req_id)

    def events_received(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    # ----------------------------------------------------------------- helpers for the transport

    def error(self, code: str, message: str, **extra: Any) -> None:
        """Queue an error and count it as a violation (abusive after ``max_violations``)."""
        extra = {k: v for k, v in extra.items() if v is not None}
        self._send(error_message(code, message, **extra))
        if self.on_error is not None:
            self.on_error(code)
        self._violation()

    def revert_auth(self, ev: Authenticated) -> None:
        """The transport refused an ``auth`` (e.g. the user's connection limit): the session
        stays what it was, so counts keyed by its principal stay right (issue 12)."""
        if self.principal is ev.principal:
            self.principal = ev.previous

    def drop(self, keys: Iterable[Key]) -> None:
        """The transport gave up a subscription (e.g. resume failed): forget it, no ack."""
        for k in keys:
            self.subscriptions.pop(k, None)

    # ----------------------------------------------------------------- internals

    def _send(self, msg: dict[str, Any]) -> None:
        self._out.append(self.encode(msg))

    def _violation(self) -> None:
        now = self.now
        self.violations.append(now)
        cutoff = now - self.limits.violation_window
        if self.violations[0] < cutoff:
            self.violations[:] = [t for t in self.violations if t >= cutoff]
        if len(self.violations) >= self.limits.max_violations and self.closing is None:
            self.closing = Close(CLOSE_POLICY, "too many invalid requests")
            self._events.append(self.closing)

    def _take_token(self, now: float) -> bool:
        tier = self.principal.tier
        if self._tokens < 0:
            self._tokens, self._stamp = float(tier.burst), now
        self._tokens = min(float(tier.burst), self._tokens + (now - self._stamp) * tier.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _targets(self, msg: dict[str, Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if "channels" in msg:
            chans = msg["channels"]
            if not isinstance(chans, list) or not chans:
                raise ProtocolError(
                    "bad_request", "'channels' must be a non-empty list of 'channel:symbol'"
                )
            for c in chans:
                if not isinstance(c, str):
                    raise ProtocolError("bad_request", f"bad channel entry {c!r}")
                ch, sep, sym = c.partition(":")
                out.append((ch, sym if sep else None))
            # the same target named twice is one target (issue 12: 200 copies of one target
            # with since_seq started 200 replays); normalized duplicates collapse in _subscribe
            out = list(dict.fromkeys(out))
        elif "channel" in msg:
            out.append((msg["channel"], msg.get("symbol")))
        else:
            raise ProtocolError("bad_request", "give 'channel' and 'symbol', or 'channels'")
        if len(out) > self.limits.max_targets_per_request:
            raise ProtocolError(
                "too_many_targets",
                f"at most {self.limits.max_targets_per_request} targets per request",
            )
        return out

    def _key(self, channel: Any, symbol: Any) -> Key:
        if not isinstance(channel, str) or channel not in ALL_CHANNELS:
            raise ProtocolError(
                "unknown_channel",
                f"unknown channel {channel!r}; channels: " + ", ".join(ALL_CHANNELS),
            )
        if channel == STATUS and symbol in (None, "", "*"):
            return (STATUS, "*")
        if symbol is None:
            raise ProtocolError("bad_request", f"channel {channel!r} needs a symbol")
        try:
            sym = normalize_symbol(symbol)
        except SymbolError as exc:
            raise ProtocolError("unknown_symbol", str(exc)) from None
        if not self.is_symbol(sym):
            raise ProtocolError("unknown_symbol", f"unknown symbol {sym!r}")
        allowed = self.principal.tier.channels
        if (
            allowed is not None
            and channel not in allowed
            and not (channel.startswith("candles_") and "candles" in allowed)
        ):
            code = "auth_required" if self.principal.anonymous else "forbidden"
            raise ProtocolError(
                code, f"channel {channel!r} is not available to tier {self.principal.tier.name!r}"
            )
        return (channel, sym)

    def _interval_ms(self, channel: str, msg: dict[str, Any]) -> int:
        """The conflation ``interval`` of a subscribe, in ms, within the limits."""
        lim = self.limits
        if channel not in CONFLATABLE and not channel.startswith("candles_"):
            raise ProtocolError(
                "bad_request",
                f"channel {channel!r} cannot be conflated; "
                "'interval' works on l2, ticker, stats and candles",
            )
        try:
            interval_ms = parse_interval(msg["interval"])
        except ValueError as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        if not lim.min_interval_ms <= interval_ms <= lim.max_interval_ms:
            raise ProtocolError(
                "bad_request",
                f"'interval' must be {lim.min_interval_ms} ms to {lim.max_interval_ms // 1000} s",
            )
        return interval_ms

    def _options(self, channel: str, symbol: str, msg: dict[str, Any]) -> SubRequest:
        lim = self.limits
        since_seq = msg.get("since_seq")
        if since_seq is not None and (
            not isinstance(since_seq, int) or isinstance(since_seq, bool) or since_seq < 0
        ):
            raise ProtocolError("bad_request", "'since_seq' must be a non-negative integer")
        since_ns = None
        if msg.get("since") is not None:
            try:
                since_ns = parse_since(msg["since"], self.ns_from_iso)
            except ValueError as exc:
                raise ProtocolError("bad_request", str(exc)) from None
        epoch = msg.get("epoch")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise ProtocolError("bad_request", "'epoch' must be an integer")
        depth = msg.get("depth")
        # l2 only: the l3 snapshot is the aggregator's, served with the updates since it
        if depth is not None and (
            channel != "l2"
            or not isinstance(depth, int)
            or isinstance(depth, bool)
            or not 1 <= depth <= lim.max_depth
        ):
            raise ProtocolError("bad_request", f"'depth' is 1..{lim.max_depth}, l2 only")
        limit = msg.get("limit")
        if limit is not None and (
            channel != "trades"
            or not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 0 <= limit <= lim.max_trades
        ):
            raise ProtocolError("bad_request", f"'limit' is 0..{lim.max_trades}, trades only")
        interval_ms = None if msg.get("interval") is None else self._interval_ms(channel, msg)
        currencies: tuple[str, ...] = ()
        if msg.get("currencies") is not None:
            cur = msg["currencies"]
            if (
                channel != "ticker"
                or not isinstance(cur, list)
                or not cur
                or len(cur) > lim.max_currencies
                or not all(isinstance(c, str) and c.isalnum() and len(c) <= 16 for c in cur)
            ):
                raise ProtocolError(
                    "bad_request",
                    "'currencies' is a list of up to "
                    f"{lim.max_currencies} currency codes, ticker only",
                )
            currencies = tuple(dict.fromkeys(c.upper() for c in cur))
            quote = symbol.partition("-")[2]
            for c in currencies:
                if self.can_convert is not None and not self.can_convert(quote, c):
                    raise ProtocolError("no_conversion_path", no_path_message(quote, c))
        if (since_seq is not None or since_ns is not None) and interval_ms is not None:
            raise ProtocolError(
                "bad_request", "resume ('since_seq'/'since') and 'interval' exclude each other"
            )
        return SubRequest(
            channel, symbol, since_seq, since_ns, epoch, depth, interval_ms, currencies, limit
        )

    def _subscribe(self, msg: dict[str, Any], req_id: Any) -> None:
        if msg.get("client_id") is not None:
            self.bind(msg["client_id"])
        added: dict[Key, SubRequest] = {}  # "BTC/USD" and "btc-usd" are one key: the last wins
        for ch, sym in self._targets(msg):
            try:
                key = self._key(ch, sym)
                req = self._options(key[0], key[1], msg)
                if (
                    key not in self.subscriptions
                    and len(self.subscriptions) >= self.principal.tier.max_subscriptions
                ):
                    raise ProtocolError(
                        "too_many_subscriptions",
                        "at most "
                        f"{self.principal.tier.max_subscriptions} subscriptions per "
                        f"connection for tier {self.principal.tier.name!r}",
                    )
            except ProtocolError as exc:
                self.error(exc.code, exc.message, id=req_id, target=f"{ch}:{sym}" if sym else ch)
                continue
            self.subscriptions[key] = req
            added[key] = req
        if added:
            self._ack("subscribed", req_id, [r.name for r in added.values()])
            self._events.append(Subscribe(tuple(added.values())))

    # ----------------------------------------------------------------- client_id

    def bind(self, raw: object) -> str:
        """Name this session ``raw`` (validated); one name per connection."""
        try:
            cid = check_client_id(raw)
        except ValueError as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        if self.client_id == cid:
            return cid
        if self.client_id is not None:
            raise ProtocolError(
                "client_id_conflict", f"this connection is already client_id {self.client_id!r}"
            )
        self.client_id = cid
        self._events.append(Bind(cid))
        return cid

    def _resume(self, msg: dict[str, Any], req_id: Any) -> None:
        raw_id = msg.get("client_id", self.client_id)
        if raw_id is None:
            raise ProtocolError("bad_request", "'resume' needs a 'client_id'")
        if msg.get("since") is None:
            raise ProtocolError("bad_request", "'resume' needs 'since' (ISO-8601 or Unix seconds)")
        try:
            since_ns = parse_since(msg["since"], self.ns_from_iso)
        except ValueError as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        self._events.append(ResumeClient(self.bind(raw_id), since_ns, req_id))

    def resume_with(
        self,
        ev: ResumeClient,
        targets: list[dict[str, Any]] | None,
        beyond_window: Mapping[Key, str | None] | None = None,
    ) -> None:
        """Subscribe again to every stored target of ``ev.client_id`` with its ``since``.

        Each target goes through the same checks as a ``subscribe`` (channel, symbol, tier,
        option ranges, subscription limit), so a stored set can never grant more than the
        client could ask for now. Conflated targets (``interval``) and ``status`` get a fresh
        latest value: they have nothing to replay. ``beyond_window`` names the streams whose
        retained window starts after ``since`` (the ISO time of their oldest message, None when
        nothing is retained): they are listed in the ``resumed`` answer, and each of them
        gets the ``resync`` (``resume_too_old``) and a flagged snapshot."""
        if targets is None:
            self.error(
                "unknown_client_id",
                f"nothing stored for client_id {ev.client_id!r} (never subscribed, or expired)",
                id=ev.req_id,
            )
            return
        added: dict[Key, SubRequest] = {}
        beyond: list[dict[str, str | None]] = []
        for t in targets:
            opts = {k: t[k] for k in STORED_OPTIONS if k in t and k != "interval_ms"}
            if t.get("interval_ms") is not None:
                opts["interval"] = f"{t['interval_ms']}ms"
            try:
                key = self._key(t["channel"], t["symbol"])
                req = self._options(key[0], key[1], opts)
                if req.interval_ms is None and key[0] != STATUS:
                    req = SubRequest(
                        req.channel, req.symbol, None, ev.since_ns, None, req.depth, None,
                        req.currencies, req.limit,
                    )  # fmt: skip
                if (
                    key not in self.subscriptions
                    and len(self.subscriptions) >= self.principal.tier.max_subscriptions
                ):
                    raise ProtocolError("too_many_subscriptions", "subscription limit reached")
            except ProtocolError as exc:
                target = f"{t['channel']}:{t['symbol']}"
                self.error(exc.code, exc.message, id=ev.req_id, target=target)
                continue
            self.subscriptions[key] = req
            added[key] = req
            if beyond_window and req.since_ns is not None and key in beyond_window:
                beyond.append({"target": req.name, "window_start": beyond_window[key]})
        ack: dict[str, Any] = {
            "type": "resumed",
            "client_id": ev.client_id,
            "since": iso_from_ns(ev.since_ns),
            "changed": [r.name for r in added.values()],
            "subscriptions": [r.name for r in self.subscriptions.values()],
            "beyond_window": beyond,
        }
        if ev.req_id is not None:
            ack["id"] = ev.req_id
        self._send(ack)
        if added:
            self._events.append(Subscribe(tuple(added.values())))

    def stored_targets(self) -> list[dict[str, Any]]:
        """The subscription set as :class:`~gateway_ws.client_ids.ClientStore` keeps it."""
        out = []
        for r in self.subscriptions.values():
            t: dict[str, Any] = {"channel": r.channel, "symbol": r.symbol}
            if r.depth is not None:
                t["depth"] = r.depth
            if r.limit is not None:
                t["limit"] = r.limit
            if r.interval_ms is not None:
                t["interval_ms"] = r.interval_ms
            if r.currencies:
                t["currencies"] = list(r.currencies)
            out.append(t)
        return out

    def _unsubscribe(self, msg: dict[str, Any], req_id: Any) -> None:
        removed: list[Key] = []
        for ch, sym in self._targets(msg):
            try:
                key = self._key(ch, sym)
            except ProtocolError as exc:
                self.error(exc.code, exc.message, id=req_id)
                continue
            if self.subscriptions.pop(key, None) is None:
                self.error("not_subscribed", f"not subscribed to {key[0]}:{key[1]}", id=req_id)
                continue
            removed.append(key)
        if removed:
            self._ack("unsubscribed", req_id, [f"{c}:{s}" for c, s in removed])
            self._events.append(Unsubscribe(tuple(removed)))

    def _ack(self, typ: str, req_id: Any, changed: list[str]) -> None:
        ack: dict[str, Any] = {
            "type": typ,
            "changed": changed,
            "subscriptions": [r.name for r in self.subscriptions.values()],
        }
        if req_id is not None:
            ack["id"] = req_id
        self._send(ack)

    def _auth(self, token: Any, req_id: Any) -> None:
        if self.verify_token is None:
            raise ProtocolError(
                "auth_unavailable", "authentication is not configured on this gateway"
            )
        if not isinstance(token, str) or not token:
            raise ProtocolError("auth_failed", "'token' must be a JWT string")
        try:
            principal = self.verify_token(token)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - the verifier's own errors: report, never crash
            raise ProtocolError("auth_failed", f"invalid token: {exc}") from None
        previous, self.principal = self.principal, principal
        # the bucket keeps its level (capped at the new tier's depth): re-sending auth must
        # not refill it (issue 12)
        self._tokens = min(self._tokens, float(principal.tier.burst))
        ack: dict[str, Any] = {
            "type": "authenticated",
            "user": principal.user,
            "tier": principal.tier.name,
        }
        if req_id is not None:
            ack["id"] = req_id
        self._send(ack)
        self._events.append(Authenticated(principal, previous))
