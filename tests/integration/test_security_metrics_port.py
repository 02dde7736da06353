"""/metrics leaves the public ports when MD_WS_METRICS_PORT / MD_REST_METRICS_PORT is set
(issue 12): the client port answers 404, the metrics port (MD_OPS_HOST) serves it."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from core.settings import Settings
from gateway_rest.app import create_app
from tests.conftest import free_port
from tests.integration.ws_helpers import drop_topics, running_gateway  # noqa: F401

pytestmark = pytest.mark.integration


def _with(settings: Settings, **env: str) -> Settings:
    return dataclasses.replace(settings, extra={**settings.extra, **env})


async def test_websocket_metrics_on_their_own_port(settings: Settings) -> None:
    port = free_port()
    s = _with(settings, MD_WS_METRICS_PORT=str(port))
    async with running_gateway(s) as gw, httpx.AsyncClient() as c:
        public = await c.get(f"http://127.0.0.1:{gw.cfg.port}/metrics")
        assert public.status_code == 404
        private = await c.get(f"http://127.0.0.1:{port}/metrics")
        assert private.status_code == 200 and "md_ws_" in private.text
        # probes still reach the public port
        assert (await c.get(f"http://127.0.0.1:{gw.cfg.port}/health/live")).status_code == 200


async def test_websocket_metrics_stay_on_the_client_port_by_default(settings: Settings) -> None:
    async with running_gateway(settings) as gw, httpx.AsyncClient() as c:
        assert (await c.get(f"http://127.0.0.1:{gw.cfg.port}/metrics")).status_code == 200


async def test_rest_metrics_on_their_own_port(redis_settings: Settings) -> None:
    port = free_port()
    app = create_app(_with(redis_settings, MD_REST_METRICS_PORT=str(port)))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient() as c:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as public:
            r = await public.get("/metrics")
            assert r.status_code == 404 and str(port) in r.json()["message"]
        private = await c.get(f"http://127.0.0.1:{port}/metrics")
        assert private.status_code == 200 and "md_rest_requests_total" in private.text
