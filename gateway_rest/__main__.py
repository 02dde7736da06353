"""``python -m gateway_rest``: uvicorn on ``MD_REST_HOST:MD_REST_PORT`` (127.0.0.1:8000).

``MD_REST_PROCESSES`` (default 1) worker processes share the listening socket; each has its own
Redis/PostgreSQL connections and its own /metrics. SIGTERM drains in-flight requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from core.errors import ConfigError
from core.logs import setup_logging
from core.security import require_secure, rest_findings
from core.settings import Settings
from core.tls import uvicorn_ssl_options
from gateway_rest.http_protocol import DEFAULT_HEADER_TIMEOUT_S, HeaderTimeoutProtocol


def factory() -> FastAPI:
    """Import-string factory so every worker process builds its own app (and connections)."""
    from gateway_rest.app import create_app

    s = Settings.from_env()
    setup_logging("gateway_rest", s.log_level)
    HeaderTimeoutProtocol.header_timeout = header_timeout(s)
    return create_app(s)


def header_timeout(s: Settings) -> float:
    t = s.get("MD_REST_HEADER_TIMEOUT_S", float, DEFAULT_HEADER_TIMEOUT_S)
    if not 0 < t <= 300:
        raise ConfigError("MD_REST_HEADER_TIMEOUT_S", f"must be in (0, 300] seconds, got {t}")
    return t


def tls_options(s: Settings) -> dict[str, Any]:
    """``MD_REST_TLS_CERT`` / ``MD_REST_TLS_KEY``: HTTPS with the platform's policy (core/tls.py:
    TLS 1.2 minimum, ECDHE+AEAD suites), as the WebSocket and FIX listeners."""
    cert = s.get("MD_REST_TLS_CERT", str, "")
    key = s.get("MD_REST_TLS_KEY", str, "") or None
    if key and not cert:
        raise ConfigError("MD_REST_TLS_CERT", "MD_REST_TLS_KEY is set but no certificate")
    if not cert:
        return {}
    for name, path in (("MD_REST_TLS_CERT", cert), ("MD_REST_TLS_KEY", key)):
        if path and not Path(path).is_file():
            raise ConfigError(name, f"no such file: {path}")
    return uvicorn_ssl_options(cert, key)


def granian_factory() -> Any:
    """The same app for granian, behind uvicorn's proxy-header middleware so that per-IP limits
    see the client behind a load balancer exactly as under uvicorn (``FORWARDED_ALLOW_IPS``)."""
    import os

    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    return ProxyHeadersMiddleware(factory(), trusted_hosts=trusted)  # type: ignore[arg-type]


def run_granian(s: Settings, workers: int) -> None:
    """``MD_REST_SERVER=granian``: the same app on granian (Rust HTTP/1.1 and TLS, one Python
    event loop per worker); the header deadline and the TLS policy map to granian's options
    (TLS 1.2 minimum; granian's rustls offers only AEAD ECDHE suites)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings

    tls = tls_options(s)
    Granian(
        "gateway_rest.__main__:granian_factory",
        address=s.rest_host,
        port=s.rest_port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        http1_settings=HTTP1Settings(header_read_timeout=int(header_timeout(s) * 1000)),
        ssl_cert=Path(tls["ssl_certfile"]) if tls else None,
        ssl_key=Path(tls["ssl_keyfile"]) if tls and tls["ssl_keyfile"] else None,
        ssl_protocol_min=SSLProtocols.tls12,
        workers_kill_timeout=5,
    ).serve()


def main() -> None:
    s = Settings.from_env()
    setup_logging("gateway_rest", s.log_level)
    require_secure("gateway_rest", s.rest_host, rest_findings(s), s)  # docs/security.md
    workers = s.get("MD_REST_PROCESSES", int, 1)
    header_timeout(s)  # a bad value stops the start here, not in each worker
    server = s.get("MD_REST_SERVER", str, "uvicorn")
    if server == "granian":
        run_granian(s, workers)
        return
    if server != "uvicorn":
        raise ConfigError("MD_REST_SERVER", f"expected uvicorn or granian, got {server!r}")
    uvicorn.run(
        "gateway_rest.__main__:factory",
        factory=True,
        host=s.rest_host,
        port=s.rest_port,
        workers=workers if workers > 1 else None,
        loop="uvloop",
        http=HeaderTimeoutProtocol,  # httptools + a header deadline (slowloris)
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **tls_options(s),
    )


if __name__ == "__main__":
    main()
