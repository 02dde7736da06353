"""A minimal HTTP/1.1 server for ``/metrics`` and ``/health`` (``/health/live``, ``/health/ready``:
see :mod:`core.health`) in processes without a web framework (aggregator, sources, storage
writers, the FIX gateway). It is deliberately tiny: GET only, one response per connection,
bounded request size, so it costs nothing on the hot path."""

from __future__ import annotations

import asyncio
import logging

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core.health import Health, scope_of

log = logging.getLogger(__name__)
MAX_REQUEST = 8192


def _response(status: str, ctype: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


async def _handle(
    health: Health, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        path = line[1].split("?", 1)[0] if len(line) >= 2 else ""
        if len(line) < 2 or line[0] != "GET":
            resp = _response("405 Method Not Allowed", "application/json", b'{"error":"GET only"}')
        elif path == "/metrics":
            resp = _response("200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        elif (scope := scope_of(path)) is not None:
            ok, body = health.evaluate(scope)
            resp = _response(
                "200 OK" if ok else "503 Service Unavailable",
                "application/json",
                orjson.dumps(body),
            )
        else:
            resp = _response("404 Not Found", "application/json", b'{"error":"not found"}')
        writer.write(resp)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_ops_server(
    health: Health, host: str, port: int, *, reuse_port: bool = False
) -> asyncio.Server:
    """``reuse_port``: several worker processes of one gateway share the port (as their client
    port), so a scrape reaches one of them, as it does on the client port."""
    server = await asyncio.start_server(
        lambda r, w: _handle(health, r, w), host, port, limit=MAX_REQUEST, reuse_port=reuse_port
    )
    log.info("ops endpoint listening", extra={"url": f"http://{host}:{port}/health"})
    return server
