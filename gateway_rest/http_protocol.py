"""uvicorn's httptools protocol with a header deadline (slowloris, issue 12).

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a client that opens
a connection and sends nothing, or sends a request's headers a byte at a time, holds a
connection and its buffers for as long as it likes, and a few thousand such clients exhaust the
process's file descriptors. Here every request's headers must be complete within
``header_timeout`` seconds of the connection opening (first request) or of its first byte
(later requests on a keep-alive connection); otherwise the connection is closed without an
answer, as nginx's ``client_header_timeout`` does (it answers 408; a client that is trickling
bytes is not reading either). Bodies are not bounded here: the API takes none.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# 10 s: a real client on a slow mobile link sends its ~300 bytes of headers in one packet; a
# probe or a browser is never near it
DEFAULT_HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``uvicorn.run(http=HeaderTimeoutProtocol)``; ``header_timeout`` is set per process."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    timeouts = (
        0  # connections closed for slow headers, in this process (md_rest_header_timeouts_total)
    )
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            type(self).timeouts += 1
            self.transport.close()
