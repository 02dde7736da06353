"""Audit events of the gateways: who logged on, who was refused and why (docs/security.md).

One JSON log line per event on the ``<service>.audit`` logger, with ``"audit": true`` and an
``event`` name, so a collector can route them to a separate, longer-kept index. The WebSocket
gateway writes its own (``gateway_ws.audit``); REST and FIX use :class:`AuditLog`.

Rules that keep the audit trail itself safe:

- a credential is never logged: pass it as ``api_key=`` and the line carries ``key_id`` (its
  :func:`core.security.fingerprint`) instead;
- values that come from a peer (a FIX CompID, a reason text) are cut to :data:`MAX_VALUE`
  characters (JSON encoding already makes newlines harmless);
- a peer that fails over and over cannot flood the log: each ``(event, limit_key)`` is written
  at most once per ``interval_s``; the next line written for it says how many were ``suppressed``.
  The table of keys is bounded (:data:`MAX_KEYS`, ~100 B each).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from core.security import fingerprint

MAX_VALUE = 200
MAX_KEYS = 10_000


class AuditLog:
    def __init__(
        self,
        service: str,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logging.getLogger(f"{service}.audit")
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], list[float]] = {}  # -> [last written, suppressed]

    def event(
        self,
        event: str,
        *,
        level: int = logging.INFO,
        limit_key: str | None = None,
        api_key: str | None = None,
        **fields: Any,
    ) -> bool:
        """Write one audit line; False when rate-limited for ``limit_key`` (then counted)."""
        suppressed = 0
        if limit_key is not None:
            now = self._clock()
            k = (event, limit_key)
            entry = self._last.get(k)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return False
            if entry is not None:
                suppressed = int(entry[1])
            elif len(self._last) >= MAX_KEYS:
                self._last = {
                    key: v for key, v in self._last.items() if now - v[0] < self.interval_s
                }
                if len(self._last) >= MAX_KEYS:
                    self._last.clear()
            self._last[k] = [now, 0]
        extra: dict[str, Any] = {"audit": True, "event": event}
        if api_key is not None:
            extra["key_id"] = fingerprint(api_key)
        for name, value in fields.items():
            extra[name] = value[:MAX_VALUE] if isinstance(value, str) else value
        if suppressed:
            extra["suppressed"] = suppressed
        self.log.log(level, event, extra=extra)
        return True
