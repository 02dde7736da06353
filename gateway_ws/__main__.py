"""``python -m gateway_ws``: ``MD_WS_PROCESSES`` gateway processes (default: one per core) on one port.

With more than one process this process is a supervisor: it starts the workers (the same
module with ``MD_WS_PROCESSES=1``), each binding the port with ``SO_REUSEPORT`` so the kernel
spreads connections, restarts a worker that dies (with backoff), and on SIGTERM stops them all
gracefully. Each worker follows Kafka on its own and serves ``/health`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys

from core.backoff import Backoff
from core.security import require_secure, ws_findings
from core.service import run
from core.settings import Settings
from gateway_ws.config import WsConfig
from gateway_ws.server import serve_gateway

log = logging.getLogger("gateway_ws")


async def _supervise(stop: asyncio.Event, n: int) -> None:
    env = dict(os.environ, MD_WS_PROCESSES="1")
    procs: dict[int, asyncio.subprocess.Process] = {}
    backoff = Backoff(initial=0.5, maximum=10.0)

    async def spawn(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway_ws", env={**env, "MD_WS_WORKER": str(i)}
        )
        log.info("worker started", extra={"worker": i, "pid": procs[i].pid})

    for i in range(n):
        await spawn(i)
    while not stop.is_set():
        waits = {asyncio.ensure_future(p.wait()): i for i, p in procs.items()}
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
        for f in waits:
            if not f.done():
                f.cancel()
        if stop.is_set():
            break
        stopper.cancel()
        for f in done:
            if f in waits:
                i = waits[f]
                log.error("worker exited, restarting", extra={"worker": i, "code": f.result()})
                await asyncio.sleep(backoff.next())
                await spawn(i)
    await _stop_workers(list(procs.values()), WORKER_STOP_S)


# a worker gets this long after SIGTERM to close its connections, then SIGKILL. All workers
# at once: one after the other, six workers holding 16,000 connections each outlived a parent
# that was itself killed meanwhile (issue 16, the 100,000-connection run)
WORKER_STOP_S = 10.0


async def _stop_workers(procs: list[asyncio.subprocess.Process], grace_s: float) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    _, pending = await asyncio.wait(waits, timeout=grace_s)
    for p, w in zip(procs, waits, strict=True):
        if w in pending:
            log.warning("worker did not stop in time, killed", extra={"pid": p.pid})
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    await asyncio.gather(*waits)


async def _main(stop: asyncio.Event) -> None:
    s = Settings.from_env()
    cfg = WsConfig.from_settings(s)
    require_secure("gateway_ws", cfg.host, ws_findings(s), s)  # docs/security.md
    if cfg.processes > 1:
        await _supervise(stop, cfg.processes)
    else:
        tune_gc(cfg.gc_gen0)
        await serve_gateway(stop)


def tune_gc(gen0: int) -> None:
    """Fewer cyclic collections in a gateway process (``MD_WS_GC_GEN0``; 0 leaves Python's).

    Every connection allocates ~100 container objects (websockets' connection, its protocol,
    queues, our session and subscription), so a storm of thousands ran a collection every 700
    allocations over an ever larger heap. The objects of the start (modules, settings) are
    frozen out of the collector's sight; the older generations are collected 5-10 times less
    often than by default. Reference counting still frees everything that is not a cycle."""
    if gen0 <= 0:
        return
    gc.freeze()
    gc.set_threshold(gen0, 50, 100)


if __name__ == "__main__":
    run(_main, service="gateway_ws")
