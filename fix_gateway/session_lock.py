"""One FIX session, one gateway process: a lease in Redis (issue 12, docs/security.md).

Within a process the newest authenticated logon takes a session over (``server.Registry``). Across
processes (pods behind one load balancer) nothing stopped two of them from serving the same
SenderCompID at once: two sequence-number streams for one session, which a FIX peer cannot
reconcile. With ``MD_FIX_SESSION_LOCK=redis`` an authenticated Logon must first take the session's
lease in Redis; a Logon of a session that another process holds is refused (Logout 5, "logged on
at another gateway") and the refusal is audited like any other.

The lease (:meth:`SessionLock.acquire`, one Lua script, atomic):

- key ``<prefix>:fix:lock:<session>`` = ``<owner>|<fence>``, ``PX`` = ``MD_FIX_SESSION_LEASE_S``
  (default 15 s). ``owner`` is unique per process (host, pid, random); a second logon of a session
  this process holds renews it (the in-process takeover keeps working);
- ``fence`` comes from ``INCR <prefix>:fix:fence:<session>``: it grows with every acquisition, so
  a holder's value can never match a later holder's. Renewal and release compare the whole value,
  so a process whose lease expired cannot renew or delete the next holder's;
- renewed every lease / 3 by a task that runs while the process holds a lease. A lease the
  renewal finds gone (taken after an expiry) or that could not be confirmed before it ran out
  (Redis unreachable, or this process stalled past its lease) ends the session at once with a
  Logout: the process fences itself off before a new holder could have started;
- the newest authenticated logon wins, across processes as within one: a refused Logon leaves a
  takeover request (``<prefix>:fix:takeover:<session>``, expiring with the lease); the holder's
  next renewal (within lease / 3) ends its session with a Logout ("taken over by a logon at
  another gateway") and releases the lease, so the client's next Logon gets in. A peer that
  vanished without a FIN therefore locks its reconnects out for seconds, not until its
  heartbeat timeout;
- released when the session ends, unless a takeover in this process already gave it to a new
  connection (checked one loop pass later).

Costs and limits: the acquire and release are synchronous Redis calls on the event loop (both
together 0.53 ms wall on the local Redis, docs/benchmarks.md "Security features"; a logon is
rare; 0.5 s timeout each), renewal is async and batched. A process that dies holding leases
leaves them until they run out (``MD_FIX_SESSION_LEASE_S``): its clients' reconnects through
another gateway are refused that long. While Redis
is unreachable, new logons are refused ("session lock unavailable") and held sessions end when
their lease runs out: availability of FIX logons depends on Redis in this mode, by design, since
a lock that fails open would allow the double session it exists to prevent. A peer that vanishes
without a FIN keeps the lease until its heartbeat timeout ends the session on its gateway, so a
reconnect through another gateway waits for that (one through the same gateway takes over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cache_keys import CacheKeys
from core.errors import ConfigError
from core.settings import Settings

if TYPE_CHECKING:
    from fix_gateway.server import Registry

log = logging.getLogger(__name__)
REDIS_TIMEOUT_S = 0.5  # a logon waits at most this for the lock; the loop is blocked meanwhile

# KEYS: lock, fence, takeover; ARGV: owner, lease ms. Returns {1, fence} when held by us (a
# takeover request older than this logon is void: the newest logon wins), {0, value} if not.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
  redis.call('DEL', KEYS[3])
  return {1, fence}
end
local prefix = ARGV[1] .. '|'
if string.sub(v, 1, #prefix) == prefix then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3])
  return {1, tonumber(string.sub(v, #prefix + 1))}
end
return {0, v}
"""
# KEYS: lock; ARGV: the holder's value, lease ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_TAKEOVER_MSG = "session taken over by a logon at another gateway"
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SessionLock:
    """This process's leases on FIX sessions (see the module docstring)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        lease_s: float = 15.0,
        owner: str | None = None,
        on_lost: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sync = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.aio = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.prefix = prefix
        self.keys = CacheKeys(prefix)
        self.lease_ms = int(lease_s * 1000)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.on_lost = on_lost
        self.clock = clock
        self.held: dict[str, int] = {}  # session id -> fence
        self.deadline: dict[str, float] = {}  # session id -> when our lease surely ends (clock)
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, s: Settings, registry: Registry) -> SessionLock | None:
        """``MD_FIX_SESSION_LOCK``: ``redis`` (one process per session) or unset/``none``."""
        mode = s.get("MD_FIX_SESSION_LOCK", str, "").strip().lower()
        if mode in ("", "none", "off"):
            return None
        if mode != "redis":
            raise ConfigError("MD_FIX_SESSION_LOCK", f"expected redis or none, got {mode!r}")
        lease = s.get("MD_FIX_SESSION_LEASE_S", float, 15.0)
        if not 1.0 <= lease <= 600.0:
            raise ConfigError("MD_FIX_SESSION_LEASE_S", f"expected 1..600 seconds, got {lease}")
        lock = cls(s.redis_url, s.redis_prefix, lease_s=lease)
        lock.on_lost = lambda sid, why: end_session(registry, sid, why)
        return lock

    def _keys(self, sid: str) -> tuple[str, str]:
        return self.keys.fix_lock(sid), self.keys.fix_fence(sid)

    def _takeover_key(self, sid: str) -> str:
        return self.keys.fix_takeover(sid)

    def _value(self, sid: str) -> str:
        return f"{self.owner}|{self.held[sid]}"

    # ------------------------------------------------------------------ logon / logout

    def acquire(self, sid: str) -> str | None:
        """None when this process now holds ``sid``; otherwise why the logon is refused."""
        t0 = self.clock()
        try:
            keys = (*self._keys(sid), self._takeover_key(sid))
            ok, val = self.sync.eval(_ACQUIRE, 3, *keys, self.owner, self.lease_ms)
        except RedisError as exc:
            log.warning("FIX session lock unavailable", extra={"session": sid, "error": str(exc)})
            return "session lock unavailable, retry later"
        if not ok:
            holder = (val.decode() if isinstance(val, bytes) else str(val)).rsplit("|", 1)[0]
            log.warning(
                "FIX logon refused: session held by another gateway, takeover requested",
                extra={"session": sid, "holder": holder},
            )
            with contextlib.suppress(RedisError):  # the holder lets go at its next renewal
                self.sync.set(self._takeover_key(sid), self.owner, px=self.lease_ms)
            return "session is logged on at another gateway (asked to let go: retry shortly)"
        fence = int(val)
        if self.held.get(sid) != fence:
            log.info("FIX session lease taken", extra={"session": sid, "fence": fence})
        self.held[sid] = fence
        self.deadline[sid] = t0 + self.lease_ms / 1000
        self._ensure_renewing()
        return None

    def release_soon(self, sid: str, still_held: Callable[[], bool]) -> None:
        """Release ``sid`` one loop pass from now unless ``still_held()`` (a takeover in this
        process gave the session to a new connection in the meantime)."""

        def release() -> None:
            if not still_held():
                self.release(sid)

        asyncio.get_running_loop().call_soon(release)

    def release(self, sid: str) -> None:
        if sid not in self.held:
            return
        value = self._value(sid)
        self.held.pop(sid, None)
        self.deadline.pop(sid, None)
        with contextlib.suppress(RedisError):  # unreachable: the lease runs out by itself
            self.sync.eval(_RELEASE, 1, self._keys(sid)[0], value)

    def close(self) -> None:
        """Release every lease (process shutdown)."""
        for sid in list(self.held):
            self.release(sid)
        if self._task is not None:
            self._task.cancel()
        self.sync.close()
        with contextlib.suppress(RuntimeError):  # in the loop: its connections closed after this
            self._closing = asyncio.get_running_loop().create_task(self.aio.aclose())

    # ------------------------------------------------------------------ renewal

    def _ensure_renewing(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease_ms / 3000)
            lost, taken = await self.renew()
            for sid in lost:
                self._lost(sid)
            for sid in taken:
                self.release(sid)  # first, so the requester's retry can take it
                log.warning(
                    "FIX session handed to a logon at another gateway", extra={"session": sid}
                )
                if self.on_lost is not None:
                    self.on_lost(sid, _TAKEOVER_MSG)

    async def renew(self) -> tuple[list[str], list[str]]:
        """Renew every held lease: (the sessions whose lease is gone or could not be confirmed
        in time, those another process asked for). A lease counts from before the request."""
        sids = list(self.held)
        if not sids:
            return [], []
        t0 = self.clock()
        results: list[Any] | None = None
        try:
            async with self.aio.pipeline(transaction=False) as p:
                for sid in sids:
                    p.eval(_RENEW, 1, self._keys(sid)[0], self._value(sid), self.lease_ms)
                    p.getdel(self._takeover_key(sid))
                results = await p.execute()
        except RedisError as exc:
            log.warning("FIX session lease renewal failed", extra={"error": str(exc)})
        lost, taken = [], []
        for i, sid in enumerate(sids):
            if sid not in self.held:
                continue  # released meanwhile
            if results is not None and results[2 * i]:
                self.deadline[sid] = t0 + self.lease_ms / 1000
                if results[2 * i + 1] is not None:
                    taken.append(sid)
            elif results is not None or self.clock() + self.lease_ms / 3000 >= self.deadline[sid]:
                lost.append(sid)  # gone, or unconfirmed and would run out before the next try
        return lost, taken

    def _lost(self, sid: str) -> None:
        log.error("FIX session lease lost: ending the session", extra={"session": sid})
        self.held.pop(sid, None)
        self.deadline.pop(sid, None)
        if self.on_lost is not None:
            self.on_lost(sid, "session lease lost (held by another gateway)")


def end_session(registry: Registry, sid: str, why: str) -> None:
    """``sid``'s lease is lost or handed over: its connection here gets Logout(``why``), closes."""
    conn = registry.active.get(sid)
    if conn is not None and not conn.session.closed:
        conn.session.terminate(why)
        conn._after()
