"""A free TCP port on loopback, for the servers tests and benchmarks start on their own ports.

One helper (it was written out eight times in tests/ and loadtests/). The kernel picks an unused
ephemeral port for a socket bound to port 0; the socket is closed before the caller binds, so
another process could take the port in between: callers that start a server retry or fail
loudly, and the ephemeral range (``net.ipv4.ip_local_port_range``) makes a reuse within
milliseconds rare.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
