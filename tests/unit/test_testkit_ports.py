"""testkit.ports.free_port: the one helper the tests and the benchmarks take their ports from."""

from __future__ import annotations

import socket

from testkit.ports import free_port


def test_a_free_port_can_be_listened_on() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert s.getsockname()[1] == port


def test_a_port_in_use_is_never_handed_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert taken not in {free_port() for _ in range(50)}
