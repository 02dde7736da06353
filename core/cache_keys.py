"""Redis key names of the hot cache (docs/storage.md "Redis keys"), shared by the storage cache
writer that writes them and the gateways that read them, so the names live in one place.

All keys are ``<prefix>:...`` with ``MD_REDIS_PREFIX`` (default ``md``); tests use a unique prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.security import fingerprint

# Book depths pre-encoded as ready-to-serve REST bodies (hash fields ``d<depth>``); a request for
# another depth is cut from the next larger one. 20 is the documented default of /orderbook.
BOOK_DEPTHS: tuple[int, ...] = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


def book_depths(max_depth: int) -> tuple[int, ...]:
    """The pre-encoded depths for a cache that keeps ``max_depth`` levels per side."""
    return tuple(sorted({d for d in BOOK_DEPTHS if d < max_depth} | {max_depth}))


# Field names inside the keys, shared the same way.
HIST_MESSAGE = "m"  # resume stream entry: the message bytes as published
HIST_EPOCH = "e"  # resume stream entry: the message's epoch


@dataclass(frozen=True)
class CacheKeys:
    """Every key name of the cache. ``CacheKeys("")`` (:data:`RELATIVE`) gives the names
    without a prefix, for the pure cache model; :meth:`under` puts one under this prefix."""

    prefix: str = "md"

    def under(self, relative: str) -> str:
        """A :data:`RELATIVE` key name under this prefix."""
        return f"{self.prefix}:{relative}" if self.prefix else relative

    def book(self, symbol: str) -> str:
        """Hash: ``d<depth>`` -> REST orderbook body (JSON bytes), ``seq``, ``epoch``."""
        return self.under(f"book:{symbol}")

    def l3(self, symbol: str) -> str:
        """String: REST level=3 orderbook body (latest ``l3_snapshot``)."""
        return self.under(f"l3:{symbol}")

    def ticker(self, symbol: str) -> str:
        """String: REST ticker body (JSON bytes)."""
        return self.under(f"ticker:{symbol}")

    def stats(self, symbol: str) -> str:
        """String: REST 24h stats body (JSON bytes)."""
        return self.under(f"stats:{symbol}")

    def candle(self, interval: str, symbol: str) -> str:
        """String: the current (latest) candle of ``interval`` (JSON bytes)."""
        return self.under(f"candle:{interval}:{symbol}")

    def trades(self, symbol: str) -> str:
        """List: recent trades, newest first (JSON bytes each), capped."""
        return self.under(f"trades:{symbol}")

    def trades_seq(self, symbol: str) -> str:
        """String: ``<epoch>:<seq>`` of the last trades message in :meth:`trades`."""
        return self.under(f"trades_seq:{symbol}")

    @property
    def symbols(self) -> str:
        """Hash: symbol -> catalogue entry (``SymbolInfo.to_dict()`` JSON plus ``seq``)."""
        return self.under("symbols")

    def hist(self, channel: str, symbol: str) -> str:
        """Stream: WebSocket resume window, IDs ``<seq>-0``, fields ``m`` (bytes) and ``e`` (epoch)."""
        return self.under(f"hist:{channel}:{symbol}")

    def client(self, owner: str, client_id: str) -> str:
        """String: a WebSocket client's subscription set for resume by ``client_id`` (JSON
        ``{"subs": [...]}``, gateway_ws/client_ids.py), expiring ``MD_WS_CLIENT_TTL_S`` after its
        last write. ``owner`` is ``anon`` or the user's fingerprint, never the user name."""
        return self.under(f"client:{owner}:{client_id}")

    def fix_lock(self, session: str) -> str:
        """String ``<owner>|<fence>`` with a TTL: the process holding a FIX session
        (fix_gateway/session_lock.py)."""
        return self.under(f"fix:lock:{session}")

    def fix_fence(self, session: str) -> str:
        """Counter: the fencing token of a FIX session's lock, one more per acquisition."""
        return self.under(f"fix:fence:{session}")

    def fix_takeover(self, session: str) -> str:
        """String with a TTL: a newer logon of a FIX session asks its holder to let go."""
        return self.under(f"fix:takeover:{session}")

    @property
    def sentinel(self) -> str:
        """String written by the cache writer; its absence means Redis lost the cache (restart)."""
        return self.under("cache:alive")

    def ratelimit(self, who: str, window: int) -> str:
        """Counter of the REST rate limiter for ``who`` (``k:<key>`` / ``ip:<addr>``) in a window.

        Anything but an address is a credential: only its fingerprint goes into the key name, so
        ``KEYS``/``MONITOR``/a dump of Redis never shows an API key (docs/security.md)."""
        kind, _, ident = who.partition(":")
        if kind != "ip":
            who = f"{kind}:{fingerprint(ident)}"
        return self.under(f"rl:{who}:{window}")


RELATIVE = CacheKeys("")
