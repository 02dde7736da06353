"""The HTTP/1.1 side of the gateway's port, sans I/O: a request head, the WebSocket upgrade
(RFC 6455 §4.2) and plain responses (``/health``, ``/metrics``, refusals).

Only what a WebSocket port needs: ``GET`` requests without a body, one request per
connection (every plain response says ``Connection: close``, as python-websockets does).
:func:`parse_head` returns None until the head is complete and refuses a head over
``MAX_HEAD`` bytes (431) or a malformed one (400); :func:`accept_key` checks the upgrade
headers (426 / 400 otherwise) and gives the ``Sec-WebSocket-Accept`` value.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from http import HTTPStatus

from gateway_ws.errors import GatewayWsError
from gateway_ws.protocol import Principal

# a browser's upgrade with cookies is 1-4 KiB; python-websockets allows 8 KiB per line and
# 128 lines. 16 KiB per request bounds what a connection holds before it is accepted.
MAX_HEAD = 16 * 1024
MAX_HEADERS = 128
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # §1.3


class HttpError(GatewayWsError):
    """A request we answer with ``status`` and close (the client's mistake)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status.value} {status.phrase}: {message}")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "


@dataclass(frozen=True, slots=True)
class Reply:
    """A plain HTTP answer on the WebSocket port (health, keys, metrics, a refused upgrade)."""

    status: HTTPStatus
    ctype: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Admitted:
    """An upgrade the gateway accepts, with the options of its URL query."""

    principal: Principal
    binary: bool = False  # encoding=msgpack
    batch: bool = False  # batch=1
    client_id: str | None = None


def parse_head(buf: bytes) -> tuple[Request, int] | None:
    """The request head at the start of ``buf`` and its length, or None if incomplete."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        return None
    try:
        text = buf[:end].decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed header line {line[:40]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if parts[0] != "GET":
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {parts[0]} not allowed: use GET")
    if "content-length" in headers or "transfer-encoding" in headers:
        raise HttpError(HTTPStatus.BAD_REQUEST, "a request with a body")
    return Request(parts[0], parts[1], headers), end + 4


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def accept_key(req: Request) -> str:
    """``Sec-WebSocket-Accept`` for a valid upgrade request (§4.2.1), else HttpError."""
    h = req.headers
    if "websocket" not in _tokens(h.get("upgrade", "")):
        raise HttpError(HTTPStatus.UPGRADE_REQUIRED, "this endpoint speaks WebSocket only")
    if "upgrade" not in _tokens(h.get("connection", "")):
        raise HttpError(HTTPStatus.UPGRADE_REQUIRED, "missing 'Connection: Upgrade'")
    if h.get("sec-websocket-version") != "13":
        raise HttpError(HTTPStatus.UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13")
    key = h.get("sec-websocket-key", "")
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64")
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def switching(accept: str) -> bytes:
    """The 101 answer (§4.2.2); no subprotocol and no extension are negotiated."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def response(status: HTTPStatus, ctype: str, body: bytes, extra: str = "") -> bytes:
    """A whole plain response that closes the connection."""
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body


def error_response(exc: HttpError) -> bytes:
    extra = "Upgrade: websocket\r\n" if exc.status == HTTPStatus.UPGRADE_REQUIRED else ""
    return response(exc.status, "text/plain; charset=utf-8", exc.message.encode(), extra)
