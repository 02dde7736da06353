"""Health reporting shared by every process: liveness apart from readiness.

A process registers named checks (sync callables returning ``(ok, detail)``), each of one kind:

- ``liveness``: the process itself is broken or stuck and only a restart helps (a loop task that
  died, a poll loop that stopped turning, a fatal error). Never a dependency: restarting a process
  does not bring Kafka or PostgreSQL back, and restarting every pod during an outage turns a
  blip into a storm of reconnects.
- ``readiness`` (the default): the process cannot do its job right now because a dependency is
  missing (Kafka lost, the cache unreachable, not caught up yet). A load balancer should stop
  sending it new clients; nothing should restart it.
- ``info``: reported for people and alerts, gates nothing (a dependency whose loss only
  degrades some answers, e.g. the database behind the REST gateway's history routes).

Endpoints (:func:`scope_of` maps the paths, every HTTP server of the platform serves them):

- ``/health/live``: 200 unless a liveness check fails. Runs only the liveness checks, which are
  in-memory, so it answers at once even while a dependency hangs.
- ``/health/ready``: 200 only when live and every readiness check passes.
- ``/health``: the combined view, the same verdict as ``/health/ready`` (what ``make up``, the
  tests and the benchmark tools wait for).

Body: ``{"status": "ok" | "degraded" | "failing", "service", "live", "ready", "checks": {name:
{"ok", "kind", "detail"}}}``; ``degraded`` = live but not ready, ``failing`` = a liveness check
fails. ``/health/live`` lists only the liveness checks and has no ``ready``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

Check = Callable[[], tuple[bool, Any]]

LIVENESS = "liveness"
READINESS = "readiness"
INFO = "info"
KINDS = (LIVENESS, READINESS, INFO)

LIVE = "live"
READY = "ready"
PATHS = {"/health": READY, "/health/ready": READY, "/health/live": LIVE}


def scope_of(path: str) -> str | None:
    """``live`` or ``ready`` for a health path, None for any other path."""
    return PATHS.get(path)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    kind: str
    ok: bool
    detail: Any


def run_check(name: str, kind: str, fn: Check) -> Result:
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a broken check is a failing check, not a crash
        ok, detail = False, f"check raised {exc!r}"
    return Result(name, kind, bool(ok), detail)


def summarize(
    service: str, results: Iterable[Result], scope: str = READY
) -> tuple[bool, dict[str, Any]]:
    """The verdict of ``scope`` (``live`` or ``ready``) over ``results`` and the response body."""
    if scope not in (LIVE, READY):
        raise ValueError(f"scope must be {LIVE!r} or {READY!r}, got {scope!r}")
    rs = [r for r in results if scope == READY or r.kind == LIVENESS]
    live = all(r.ok for r in rs if r.kind == LIVENESS)
    ready = live and all(r.ok for r in rs if r.kind == READINESS)
    ok = live if scope == LIVE else ready
    body: dict[str, Any] = {
        "status": "ok" if ok else ("failing" if not live else "degraded"),
        "service": service,
        "live": live,
    }
    if scope == READY:
        body["ready"] = ready
    body["checks"] = {r.name: {"ok": r.ok, "kind": r.kind, "detail": r.detail} for r in rs}
    return ok, body


class Health:
    def __init__(self, service: str) -> None:
        self.service = service
        self._checks: dict[str, tuple[str, Check]] = {}

    def add(self, name: str, check: Check, *, kind: str = READINESS) -> None:
        """Register (or replace) check ``name``; ``kind`` is liveness, readiness or info."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._checks[name] = (kind, check)

    def set_kind(self, name: str, kind: str) -> None:
        """Re-declare an existing check (a service that registered it with the default kind)."""
        self.add(name, self._checks[name][1], kind=kind)

    def kinds(self) -> dict[str, str]:
        return {name: kind for name, (kind, _) in self._checks.items()}

    def results(self, scope: str = READY) -> list[Result]:
        """Run the checks ``scope`` needs: liveness ones only for ``live``, all for ``ready``."""
        return [
            run_check(name, kind, fn)
            for name, (kind, fn) in self._checks.items()
            if scope == READY or kind == LIVENESS
        ]

    def evaluate(
        self, scope: str = READY, extra: Iterable[Result] = ()
    ) -> tuple[bool, dict[str, Any]]:
        """Verdict and body of ``scope``; ``extra`` adds results computed elsewhere (async pings)."""
        return summarize(self.service, [*self.results(scope), *extra], scope)

    def live(self) -> tuple[bool, dict[str, Any]]:
        return self.evaluate(LIVE)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.evaluate(READY)

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``/health``: the combined view, same verdict as readiness."""
        return self.evaluate(READY)


# ------------------------------------------------------------------ reusable check builders


class _Task(Protocol):
    def done(self) -> bool: ...
    def get_name(self) -> str: ...
    def cancelled(self) -> bool: ...
    def exception(self) -> BaseException | None: ...


def tasks_alive(tasks: Callable[[], Iterable[_Task | None]]) -> Check:
    """Liveness of long-running loop tasks: any that finished (crash, return, cancel) fails.

    ``tasks`` is called at each check, so tasks started later (or restarted) are seen."""

    def check() -> tuple[bool, Any]:
        dead: dict[str, str] = {}
        for t in tasks():
            if t is None or not t.done():
                continue
            if t.cancelled():
                why = "cancelled"
            else:
                exc = t.exception()
                why = "returned" if exc is None else f"{type(exc).__name__}: {exc}"
            dead[t.get_name()] = why
        return not dead, {"dead": dead}

    return check


def progressing(
    last_at: Callable[[], float],
    max_age_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Liveness of a loop that stamps ``last_at`` (a ``clock`` time) on every turn: fails once it
    has not turned for ``max_age_s``. 0 means not started yet: passes (start-up is the startup
    probe's business, and a slow start is not a stuck loop)."""

    def check() -> tuple[bool, Any]:
        at = last_at()
        if not at:
            return True, {"started": False}
        age = clock() - at
        return age < max_age_s, {"last_turn_s": round(age, 3), "max_s": max_age_s}

    return check


class _Follower(Protocol):
    connected: bool

    def health(self) -> tuple[bool, dict[str, Any]]: ...


class _Event(Protocol):
    def is_set(self) -> bool: ...


def add_follower(
    health: Health,
    follower: _Follower,
    *,
    name: str = "kafka",
    loops: str = "follower_loops",
) -> None:
    """The two halves of :meth:`core.follower.StreamFollower.health` as two checks.

    ``name`` (readiness): Kafka reachable (watchdog) or the direct feed proven whole, and the
    streams read to their end once at start; its detail is the follower's whole report. ``loops`` (liveness): none of the
    follower's loop tasks died (``dead_loops``): a dead loop freezes every book it serves.
    """

    def ready() -> tuple[bool, Any]:
        _, detail = follower.health()
        ev: _Event | None = getattr(follower, "ready", None)
        caught_up = ev.is_set() if ev is not None else bool(detail.get("ready"))
        # Kafka away but the direct feed proven whole (core/follower.py): the books are live
        fed = bool(getattr(follower, "backup_paused", False))
        return bool((follower.connected or fed) and caught_up), detail

    def alive() -> tuple[bool, Any]:
        _, detail = follower.health()
        dead = list(detail.get("dead_loops") or ())
        return not dead, {"dead_loops": dead}

    health.add(name, ready, kind=READINESS)
    health.add(loops, alive, kind=LIVENESS)
