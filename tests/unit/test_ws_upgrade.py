"""The HTTP side of the gateway's own server (gateway_ws/upgrade.py), no socket."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_ws.config import WsConfig
from gateway_ws.upgrade import (
    MAX_HEAD,
    HttpError,
    accept_key,
    error_response,
    parse_head,
    response,
    switching,
)

UPGRADE = (
    b"GET /ws?encoding=msgpack HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
)


def test_a_head_is_read_once_complete_with_what_follows_left_over() -> None:
    assert parse_head(UPGRADE[:-1]) is None
    got = parse_head(UPGRADE + b"\x81\x80")
    assert got is not None
    req, n = got
    assert n == len(UPGRADE)
    assert req.method == "GET" and req.target == "/ws?encoding=msgpack"
    assert req.headers["upgrade"] == "websocket"
    assert req.headers["x-a"] == "1, 2"  # repeated header: joined


def test_the_accept_key_of_rfc_6455_section_1_3() -> None:
    got = parse_head(UPGRADE)
    assert got is not None
    assert accept_key(got[0]) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in switching(
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"x" * (MAX_HEAD + 1), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
        (b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", HTTPStatus.METHOD_NOT_ALLOWED),
        (b"GET /ws\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GET /ws HTTP/1.1\r\nno colon\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GET /ws HTTP/1.1\r\nContent-Length: 3\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GET /\xff HTTP/1.1\r\n\r\n", HTTPStatus.BAD_REQUEST),
    ],
)
def test_bad_heads_get_their_status(raw: bytes, status: HTTPStatus) -> None:
    with pytest.raises(HttpError) as exc:
        parse_head(raw)
    assert exc.value.status == status


@pytest.mark.parametrize(
    ("drop", "replace", "status"),
    [
        (b"Upgrade: websocket\r\n", b"", HTTPStatus.UPGRADE_REQUIRED),
        (b"Connection: keep-alive, Upgrade\r\n", b"Connection: close\r\n", 426),
        (b"Sec-WebSocket-Version: 13\r\n", b"Sec-WebSocket-Version: 8\r\n", 426),
        (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"Sec-WebSocket-Key: abc\r\n", 400),
    ],
)
def test_bad_upgrades_are_refused(drop: bytes, replace: bytes, status: int) -> None:
    got = parse_head(UPGRADE.replace(drop, replace))
    assert got is not None
    with pytest.raises(HttpError) as exc:
        accept_key(got[0])
    assert exc.value.status == status
    raw = error_response(exc.value)
    assert raw.startswith(f"HTTP/1.1 {status} ".encode())
    assert (b"Upgrade: websocket\r\n" in raw) == (status == 426)


def test_a_plain_response_has_its_length_and_closes() -> None:
    raw = response(HTTPStatus.OK, "application/json", b'{"ok":true}')
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b'{"ok":true}'
    assert b"Content-Length: 11" in head and b"Connection: close" in head


def test_the_server_is_a_setting_and_deflate_keeps_websockets() -> None:
    assert WsConfig.from_settings(Settings.from_env({})).native_server
    ws = WsConfig.from_settings(Settings.from_env({"MD_WS_SERVER": "websockets"}))
    assert ws.server == "websockets" and not ws.native_server
    deflate = WsConfig.from_settings(Settings.from_env({"MD_WS_DEFLATE": "1"}))
    assert deflate.server == "native" and not deflate.native_server
    with pytest.raises(ConfigError, match="MD_WS_SERVER"):
        WsConfig.from_settings(Settings.from_env({"MD_WS_SERVER": "picows"}))
