"""The live market page at ``/`` (sources in ``web/``, bundle in ``web/dist``).

``mount_web(app)`` adds three routes to the REST gateway's app:

- ``GET /``: ``web/dist/index.html`` (symbol picker, order book ladder, depth chart, trades tape,
  candle chart), which speaks the public WebSocket protocol to gateway_ws;
- ``/web/...``: the bundled script (lightweight-charts included: nothing comes from a CDN) and CSS;
- ``GET /web-config.json``: where the page finds the WebSocket gateway: ``MD_WEB_WS_URL`` when set
  (behind a proxy or load balancer), else the page's own host name with ``MD_WS_PORT``; and the
  book checksum depth (``MD_BOOK_CHECKSUM_DEPTH``).

The bundle is built at build time, never at run time: ``npm --prefix web ci && npm --prefix web
run build`` (the Dockerfile and tests/integration/test_web_page.py do it). ``MD_WEB_DIR`` points
at another build. Without a build, ``/`` answers 503 saying how to make one, and the API is
unaffected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.settings import Settings

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Live market: not built</title>
<body style="font-family:system-ui;padding:2em"><h1>The live market page is not built</h1>
<p>Build it once with <code>npm --prefix web ci &amp;&amp; npm --prefix web run build</code>
(needs Node.js 18+), then reload. The API is at <a href="/docs">/docs</a>.</p></body>"""


def web_dir() -> Path:
    return Path(os.environ.get("MD_WEB_DIR") or DEFAULT_DIR)


def web_config(settings: Settings) -> dict[str, Any]:
    return {
        "ws_url": settings.get("MD_WEB_WS_URL", str, "") or None,
        "ws_port": settings.ws_port,
        "ws_path": "/ws",
        "checksum_depth": settings.book_checksum_depth,
    }


def mount_web(app: Any, settings: Settings | None = None) -> None:
    """Serve the live market page from ``app`` (a FastAPI/Starlette application)."""
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.staticfiles import StaticFiles

    s = settings or Settings.from_env()
    root = web_dir()
    config = web_config(s)

    async def index(_request: Any) -> Any:
        page = root / "index.html"
        if not page.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def cfg(_request: Any) -> Any:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    app.add_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route("/web-config.json", cfg, methods=["GET"], include_in_schema=False)
    static = StaticFiles(directory=root / "web", check_dir=False)

    async def assets(scope: Any, receive: Any, send: Any) -> None:
        if not (root / "web").is_dir():  # not built (yet): a clear 503, not a 500
            await PlainTextResponse("live market page not built", status_code=503)(
                scope, receive, send
            )
            return
        await static(scope, receive, send)

    app.mount("/web", assets, name="web")
