"""uvicorn's httptools protocol with a header deadline (slowloris, issue 12).

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a client that opens
a connection and sends nothing, or sends a request's headers a byte at a time, holds a
connection and its buffers for as long as it likes, and a few thousand such clients exhaust the
process's file descriptors. Here every request's headers must be complete within
``header_timeout`` seconds (checked every quarter of it) of the connection opening (first
request) or of its first byte (later requests on a keep-alive connection); otherwise the
connection is closed without an answer, as nginx's ``client_header_timeout`` does (it answers
408; a client that is trickling bytes is not reading either). Bodies are not bounded here: the API takes none.

It also answers the hottest requests itself (issue 17): a ``GET`` whose answer the app can give
without awaiting anything (``answer_now``: gateway_rest/middleware.py; a hot route's fresh
micro-cached body and a rate-limit token in hand) is written in one ``transport.write`` from
the parser's callback, without an ASGI task, a receive/send pair and two writes. Everything
else (another method or route, a stale body, no token in hand, HTTP/1.0, a pipelined request
behind an unfinished one, a paused transport) goes to the ASGI app exactly as before. The
bytes are those uvicorn writes for the same ASGI answer: its status line and default headers
(``date``, ``server``) then the app's headers and body.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from urllib.parse import unquote

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# (path, query, headers, client address) -> (status, headers, body), or None: ask the ASGI app
AnswerNow = Callable[
    [str, bytes, list[tuple[bytes, bytes]], str],
    tuple[int, list[tuple[bytes, bytes]], bytes] | None,
]

log = logging.getLogger(__name__)

# 10 s: a real client on a slow mobile link sends its ~300 bytes of headers in one packet; a
# probe or a browser is never near it
DEFAULT_HEADER_TIMEOUT_S = 10.0


class _Deadlines:
    """The connections of one event loop whose headers are due, and one sweep timer for all.

    One timer per request (``call_later`` + ``cancel``: a TimerHandle and a heap push each) cost
    ~3 % of a hot request (py-spy, docs/benchmarks.md "REST per core"); a dict entry costs a
    tenth of it. The sweep runs every quarter of the deadline while a connection waits, so a
    connection is closed between 1 and 1.25 deadlines after it started waiting.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[HeaderTimeoutProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, p: HeaderTimeoutProtocol) -> None:
        self.due[p] = self.loop.time() + p.header_timeout
        if self.timer is None:
            self.timer = self.loop.call_later(p.header_timeout / 4, self.sweep, p.header_timeout)

    def sweep(self, period: float) -> None:
        now = self.loop.time()
        for p, at in list(self.due.items()):
            if at <= now:
                del self.due[p]
                p._expire()
        self.timer = self.loop.call_later(period / 4, self.sweep, period) if self.due else None


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


def _answerer(app: object) -> tuple[AnswerNow | None, ProxyHeadersMiddleware | None]:
    """The app's ``answer_now`` behind uvicorn's proxy-header middleware, if it has one."""
    proxy = app if isinstance(app, ProxyHeadersMiddleware) else None
    inner = proxy.app if proxy is not None else app
    return getattr(inner, "answer_now", None), proxy


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``uvicorn.run(http=HeaderTimeoutProtocol)``; ``header_timeout`` is set per process."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    timeouts = (
        0  # connections closed for slow headers, in this process (md_rest_header_timeouts_total)
    )
    answer_in_protocol = True  # False: every request goes to the ASGI app (tests compare both)
    answered_now = 0  # requests answered in the protocol, in this process
    _deadlines: _Deadlines
    _answer: AnswerNow | None = None
    _proxy: ProxyHeadersMiddleware | None = None
    _answered = False  # the current request was answered here: its body and end are ignored

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        d = _LOOPS.get(self.loop)
        if d is None:
            d = _LOOPS[self.loop] = _Deadlines(self.loop)
        self._deadlines = d
        d.arm(self)
        if self.answer_in_protocol and self.limit_concurrency is None:
            self._answer, self._proxy = _answerer(self.app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._answered = False
        if self not in self._deadlines.due:
            self._deadlines.arm(self)

    def on_headers_complete(self) -> None:
        self._deadlines.due.pop(self, None)
        if self._answer is not None and self._answer_now(self._answer):
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._answered:  # a GET's body: ignored, as the routes ignore it
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._answered:
            super().on_message_complete()

    def _client_ip(self) -> str:
        """The client's address as the ASGI app sees it: the peer's, or the one a trusted
        proxy names in X-Forwarded-For (uvicorn's ProxyHeadersMiddleware, same rules)."""
        host = self.client[0] if self.client else "unknown"
        proxy = self._proxy
        if proxy is not None and host in proxy.trusted_hosts:
            fwd = [v for k, v in self.headers if k == b"x-forwarded-for"]
            if fwd:
                fwd_host, _ = proxy.trusted_hosts.get_trusted_client_address(
                    b", ".join(fwd).decode("latin1")
                )
                if fwd_host:
                    host = fwd_host
        return host

    def _answer_now(self, answer: AnswerNow) -> bool:
        """Answer the request whose headers just arrived, if the app can without a task."""
        p = self.parser
        if (
            p.get_method() != b"GET"
            or p.get_http_version() != "1.1"
            or not p.should_keep_alive()
            or p.should_upgrade()
            or self.expect_100_continue
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.flow.write_paused
        ):
            return False
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        try:
            got = answer(self.root_path + path, url.query or b"", self.headers, self._client_ip())
        except Exception:  # a bug: logged, and the ASGI app gives the answer
            log.exception("answer in the protocol failed", extra={"path": path})
            return False
        if got is None:
            return False
        status, headers, body = got
        out = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            out += (name, b": ", value, b"\r\n")
        out += (b"\r\n", body)
        self.transport.write(b"".join(out))
        self._answered = True
        type(self).answered_now += 1
        # what uvicorn does once a response is complete (on_response_complete)
        self.server_state.total_requests += 1
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        d = getattr(self, "_deadlines", None)
        if d is not None:
            d.due.pop(self, None)
        super().connection_lost(exc)

    def _expire(self) -> None:
        if not self.transport.is_closing():
            type(self).timeouts += 1
            self.transport.close()
