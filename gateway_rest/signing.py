"""Ed25519 signatures on REST answers (issue 12, docs/security.md "Message signing").

Every ``/api/`` answer (data and errors alike) gets ``X-MD-Signature: kid=<kid>;sig=<base64url>``
over its exact body bytes (core/signing.py); ``GET /keys`` serves the public keys as on the
WebSocket port, and ``python -m core.verify --http URL`` checks an answer.

A ``send`` wrapper rather than a change to each route: the fast path, the routes and the
middleware's own 401/429 answers all go out through it, so no answer can miss its signature.
The start message is held until the body is complete, because the header must precede it.
Signing costs ~30-50 us; the fast path hands out the same cached ``bytes`` for many requests, so
signatures of recent bodies are kept (:attr:`ResponseSigner.cache`, bounded) and reused.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.types import Message, Scope, Send

from core.settings import Settings
from core.signing import HEADER, Signer, keys_document

_HEADER = HEADER.encode()
# signatures kept for bodies of at most CACHE_BODY_MAX bytes (the fast path's orderbook and
# ticker answers are 0.3-10 KiB), at most CACHE_MAX of them: <= 32 MiB, cleared when full
CACHE_MAX = 1024
CACHE_BODY_MAX = 32 * 1024


class ResponseSigner:
    """``wrap(scope, send)``: the ``send`` that signs an ``/api/`` answer's body."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.cache: dict[bytes, bytes] = {}

    def header(self, body: bytes) -> bytes:
        if len(body) > CACHE_BODY_MAX:
            return self.signer.header(body)
        value = self.cache.get(body)
        if value is None:
            if len(self.cache) >= CACHE_MAX:
                self.cache.clear()
            value = self.cache[body] = self.signer.header(body)
        return value

    def wrap(self, scope: Scope, send: Send) -> Send:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/api/"):
            return send
        held: list[Message] = []
        parts: list[bytes] = []

        async def signing_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                held.append(message)
                return
            if kind != "http.response.body" or not held:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(parts)
            start = held.pop()
            headers = [*start.get("headers", []), (_HEADER, self.header(body))]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return signing_send


def keys_router(signer: Signer | None, settings: Settings) -> APIRouter:
    """``GET /keys``: the signing public keys (a JWK set, RFC 8037), as the WebSocket port."""
    router = APIRouter()
    doc = orjson.dumps(keys_document(signer, settings))

    @router.get(
        "/keys",
        tags=["ops"],
        summary="Public keys of the X-MD-Signature header (JWK set, Ed25519)",
        response_model=dict[str, Any],
    )
    async def keys() -> Response:
        return Response(doc, media_type="application/json")

    return router
