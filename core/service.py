"""Process runner: uvloop, JSON logs, graceful shutdown on SIGTERM/SIGINT.

``run(main, service=...)`` calls ``main(stop)`` where ``stop`` is an ``asyncio.Event`` set by the
first signal; the service finishes its in-flight work (commits, flushes, closes sockets) and
returns. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from core.errors import ConfigError
from core.logs import setup_logging
from core.settings import Settings

log = logging.getLogger(__name__)


def run(main: Callable[[asyncio.Event], Awaitable[None]], *, service: str) -> None:
    settings = Settings.from_env()
    setup_logging(service, settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        pass

    async def _amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        hits = 0

        def _on_signal(sig: int) -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                log.warning("second signal, exiting now")
                os._exit(130)
            log.info("shutting down", extra={"signal": signal.Signals(sig).name})
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig)
        log.info("starting", extra={"pid": os.getpid()})
        await main(stop)
        log.info("stopped")

    try:
        asyncio.run(_amain())
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except ConfigError as exc:  # a setting to fix, not a bug: one clear line, no traceback
        log.error("refusing to start: %s", exc, extra={"setting": exc.key})
        sys.exit(2)
