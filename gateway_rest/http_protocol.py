"""uvicorn's httptools protocol with a header deadline (slowloris, issue 12).

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a client that opens
a connection and sends nothing, or sends a request's headers a byte at a time, holds a
connection and its buffers for as long as it likes, and a few thousand such clients exhaust the
process's file descriptors. Here every request's headers must be complete within
``header_timeout`` seconds (checked every quarter of it) of the connection opening (first
request) or of its first byte (later requests on a keep-alive connection); otherwise the
connection is closed without an answer, as nginx's ``client_header_timeout`` does (it answers
408; a client that is trickling bytes is not reading either). Bodies are not bounded here: the API takes none.
"""

from __future__ import annotations

import asyncio
import weakref

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``uvicorn.run(http=HeaderTimeoutProtocol)``; ``header_timeout`` is set per process."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    timeouts = (
        0  # connections closed for slow headers, in this process (md_rest_header_timeouts_total)
    )
    _deadlines: _Deadlines

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        d = _LOOPS.get(self.loop)
        if d is None:
            d = _LOOPS[self.loop] = _Deadlines(self.loop)
        self._deadlines = d
        d.arm(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self not in self._deadlines.due:
            self._deadlines.arm(self)

    def on_headers_complete(self) -> None:
        self._deadlines.due.pop(self, None)
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        d = getattr(self, "_deadlines", None)
        if d is not None:
            d.due.pop(self, None)
        super().connection_lost(exc)

    def _expire(self) -> None:
        if not self.transport.is_closing():
            type(self).timeouts += 1
            self.transport.close()
