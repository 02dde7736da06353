"""``python -m gateway_rest``: uvicorn on ``MD_REST_HOST:MD_REST_PORT`` (127.0.0.1:8000).

``MD_REST_PROCESSES`` (default 1) worker processes share the listening socket; each has its own
Redis/PostgreSQL connections and its own /metrics. SIGTERM drains in-flight requests.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from core.logs import setup_logging
from core.security import require_secure, rest_findings
from core.settings import Settings


def factory() -> FastAPI:
    """Import-string factory so every worker process builds its own app (and connections)."""
    from gateway_rest.app import create_app

    s = Settings.from_env()
    setup_logging("gateway_rest", s.log_level)
    return create_app(s)


def main() -> None:
    s = Settings.from_env()
    setup_logging("gateway_rest", s.log_level)
    require_secure("gateway_rest", s.rest_host, rest_findings(s), s)  # docs/security.md
    workers = s.get("MD_REST_PROCESSES", int, 1)
    uvicorn.run(
        "gateway_rest.__main__:factory",
        factory=True,
        host=s.rest_host,
        port=s.rest_port,
        workers=workers if workers > 1 else None,
        loop="uvloop",
        http="auto",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
