"""Health reporting shared by every process.

A process registers named checks (sync callables returning ``(ok, detail)``); ``/health`` answers
200 with ``{"status":"ok"}`` only when all pass, else 503 with the failing checks named, so an
orchestrator's readiness probe and a human read the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[], tuple[bool, Any]]


class Health:
    def __init__(self, service: str) -> None:
        self.service = service
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        ok_all = True
        for name, fn in self._checks.items():
            try:
                ok, detail = fn()
            except Exception as exc:  # a broken check is a failing check, not a crash
                ok, detail = False, f"check raised {exc!r}"
            ok_all &= ok
            checks[name] = {"ok": ok, "detail": detail}
        return ok_all, {
            "status": "ok" if ok_all else "degraded",
            "service": self.service,
            "checks": checks,
        }
