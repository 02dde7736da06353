"""The ops routes: ``/health`` (the readiness verdict), ``/health/ready``, ``/health/live``
and ``/metrics`` (404 on this port when ``MD_REST_METRICS_PORT`` serves it elsewhere)."""

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.health import INFO, LIVE, READINESS, READY, Health, Result
from gateway_rest.errors import JSON
from gateway_rest.middleware import REGISTRY
from gateway_rest.models import HealthResponse
from gateway_rest.store import MarketStore


def ops_router(st: MarketStore, metrics_port: int) -> APIRouter:
    router = APIRouter()

    # Liveness: the event loop answering is the check (no loop of our own can die here), so
    # /health/live does no I/O. Readiness: the hot routes (orderbook, ticker, trades, symbols)
    # are served from Redis, so "redis" gates it. The database only serves history (candles,
    # trades with start/end) and the stale fallback while Redis is down: reported ("info"),
    # never a reason to take the pod out of the load balancer while Redis answers.
    health = Health("gateway_rest")

    async def health_response(scope: str) -> Response:
        extra: list[Result] = []
        if scope == READY:
            pings = await st.ping()
            extra = [
                Result("redis", READINESS, *pings["redis"]),
                Result("database", INFO, *pings["database"]),
            ]
        ok, body = health.evaluate(scope, extra)
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type=JSON)

    health_doc: dict[str, Any] = {
        "response_model": HealthResponse,
        "responses": {503: {"model": HealthResponse}},
        "tags": ["ops"],
    }

    @router.get(
        "/health",
        summary="Combined health, the same verdict as /health/ready",
        description="200 when Redis answers (the hot routes); the database is reported "
        "(`kind: info`) but does not fail it. Each check says its `kind`.",
        **health_doc,
    )
    async def health_combined() -> Response:
        return await health_response(READY)

    @router.get(
        "/health/ready",
        summary="Readiness: 200 when the hot routes can be served (Redis answers)",
        **health_doc,
    )
    async def health_ready() -> Response:
        return await health_response(READY)

    @router.get(
        "/health/live",
        summary="Liveness: 200 while the process serves requests (no dependency is asked)",
        **health_doc,
    )
    async def health_live() -> Response:
        return await health_response(LIVE)

    @router.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        if metrics_port:
            raise StarletteHTTPException(404, f"/metrics is served on port {metrics_port}")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
