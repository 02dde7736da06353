"""Answers written by the HTTP protocol itself (gateway_rest/http_protocol.py, issue 17) are the
bytes the ASGI app writes for the same request, and everything the protocol cannot decide at
once still goes through the app.

A real uvicorn server in this process (the gateway's protocol class, proxy headers on as in
production) over a real Redis; raw sockets, so that every byte of the answers is compared.
Each comparison uses a fresh client address per server (``X-Forwarded-For`` from a trusted
127.0.0.1), so both sides have made the same number of requests in the window and their
``X-RateLimit-Remaining`` agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
import uvicorn

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig, Tier
from gateway_rest.http_protocol import HeaderTimeoutProtocol
from gateway_rest.ratelimit import chunk_for
from storage.cache_model import CacheModel
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import put_cache_writes

R = TypeVar("R")

pytestmark = pytest.mark.integration
SYM = "PA-USD"
BOOK = f"/api/v1/market/{SYM}/orderbook"
PRO_KEY = "pro-key-protocol-test"


async def _seed(s: Settings) -> None:
    m = CacheModel(book_depth=100)
    m.on_snapshot_record(b"status:PA-USD", T.status(SYM, 1))
    m.on_snapshot_record(
        b"l2:PA-USD",
        T.l2_snapshot(
            SYM,
            9,
            [[str(100 - i), "1"] for i in range(30)],
            [[str(101 + i), "2"] for i in range(30)],
            checksum=7,
        ),
    )
    m.on_snapshot_record(b"ticker:PA-USD", T.ticker(SYM, 4))
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        await put_cache_writes(r, CacheKeys(s.redis_prefix), m.take_writes())
    finally:
        await r.aclose()


def _config(anon_rps: int = 100_000) -> RestConfig:
    keys = f"{PRO_KEY}-on:pro,{PRO_KEY}-off:pro"  # one per side: each its own count
    base = RestConfig.from_settings(Settings.from_env({"MD_REST_API_KEYS": keys}))
    tiers = dict(base.tiers)
    tiers["anonymous"] = dataclasses.replace(tiers["anonymous"], limit=anon_rps)
    # a micro-cache and a catalogue that stay fresh for the whole test on a loaded machine
    return dataclasses.replace(base, microcache_ms=60_000, catalogue_ttl_s=60.0, tiers=tiers)


@dataclasses.dataclass
class Gateway:
    port: int
    server: uvicorn.Server


@pytest.fixture
def in_protocol() -> Iterator[None]:
    yield
    HeaderTimeoutProtocol.answer_in_protocol = True


async def _serve(s: Settings, cfg: RestConfig) -> AsyncIterator[Gateway]:
    app = create_app(s, config=cfg)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=HeaderTimeoutProtocol,
            log_config=None,
            access_log=False,
            forwarded_allow_ips="127.0.0.1",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        yield Gateway(port, server)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def gateway(redis_settings: Settings) -> AsyncIterator[Gateway]:
    await _seed(redis_settings)
    async for g in _serve(redis_settings, _config()):
        yield g


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send ``requests`` on one connection (all in one write: pipelined) and read the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        return [await asyncio.wait_for(_read_answer(reader), 10) for _ in requests]
    finally:
        writer.close()


def _get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: t", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _without_date(answer: bytes) -> bytes:
    return b"\r\n".join(x for x in answer.split(b"\r\n") if not x.lower().startswith(b"date:"))


async def _in_one_window(step: Callable[[], Awaitable[R]]) -> R:
    """``step`` repeated until one run of it fell within one one-second rate-limit window (at
    most 5 tries): tokens are reserved per window, so a run across a boundary would count its
    requests for a reason other than the path."""
    for _ in range(5):
        window = int(time.time())
        out = await step()
        if int(time.time()) == window:
            return out
    raise AssertionError("no run within one rate-limit window in 5 tries")


async def _twice(port: int, target: str, *headers: str) -> tuple[list[bytes], int]:
    """Two requests of a fresh client on one connection, one after the other (the first goes
    through the app and reserves the client's tokens; the second may be answered in the
    protocol); and how many were answered in the protocol. Repeated if a one-second rate-limit
    window ended between them (the counts would differ for a reason other than the path)."""

    async def step() -> tuple[list[bytes], int]:
        ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        hs = (*headers, f"X-Forwarded-For: {ip}")
        before = HeaderTimeoutProtocol.answered_now
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            out = []
            for _ in range(2):
                writer.write(_get(target, *hs))
                out.append(await asyncio.wait_for(_read_answer(reader), 10))
        finally:
            writer.close()
        return out, HeaderTimeoutProtocol.answered_now - before

    return await _in_one_window(step)


TARGETS = [
    (BOOK, ()),
    (f"{BOOK}?depth=5", ()),
    (f"{BOOK}?depth=7&level=2", ()),
    (f"/api/v1/market/{SYM.lower().replace('-', '%2F')}/orderbook?depth=3", ()),
    (f"/api/v1/market/{SYM}/ticker", ()),
    (BOOK, (f"X-API-Key: {PRO_KEY}-{{side}}",)),
]


@pytest.mark.parametrize(("target", "headers"), TARGETS)
async def test_protocol_answer_equals_asgi_answer(
    gateway: Gateway, in_protocol: None, target: str, headers: tuple[str, ...]
) -> None:
    HeaderTimeoutProtocol.answer_in_protocol = True
    fast, answered = await _twice(gateway.port, target, *(h.format(side="on") for h in headers))
    assert answered == 1, "the second request was not answered in the protocol"
    HeaderTimeoutProtocol.answer_in_protocol = False
    slow, answered = await _twice(gateway.port, target, *(h.format(side="off") for h in headers))
    assert answered == 0
    assert fast[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"x-ratelimit-remaining: " in fast[1]
    assert _without_date(fast[1]) == _without_date(slow[1])
    assert _without_date(fast[0]) == _without_date(slow[0])


async def test_over_the_limit_in_protocol_equals_asgi_429(
    redis_settings: Settings, in_protocol: None
) -> None:
    """A client over its limit whose token is in hand gets the app's 429, headers and all."""
    await _seed(redis_settings)
    limit = 100  # chunk_for(100) = 2: the first request reserves its own count and the next
    assert chunk_for(limit) == 2
    keys = CacheKeys(redis_settings.redis_prefix)
    r = aioredis.Redis.from_url(redis_settings.redis_url)
    out: dict[bool, tuple[list[bytes], int]] = {}
    try:
        async for g in _serve(redis_settings, _config(anon_rps=limit)):
            await _exchange(g.port, [_get(BOOK)])  # the body micro-cached
            for on in (True, False):
                HeaderTimeoutProtocol.answer_in_protocol = on
                for _ in range(5):
                    ip = f"10.9.{int(on)}.{uuid.uuid4().int % 250}"
                    window = int(time.time())
                    await r.set(keys.ratelimit(f"ip:{ip}", window), limit, px=5000)
                    before = HeaderTimeoutProtocol.answered_now
                    answers = await _exchange(g.port, [_get(BOOK, f"X-Forwarded-For: {ip}")])
                    answers += await _exchange(g.port, [_get(BOOK, f"X-Forwarded-For: {ip}")])
                    if int(time.time()) == window:
                        out[on] = answers, HeaderTimeoutProtocol.answered_now - before
                        break
    finally:
        await r.aclose()
    (fast, n_fast), (slow, n_slow) = out[True], out[False]
    assert (n_fast, n_slow) == (1, 0)
    assert fast[1].startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"retry-after: 1\r\n" in fast[1]
    assert _without_date(fast[1]) == _without_date(slow[1])


async def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    """A request behind one the app is still answering waits for it (never overtakes it);
    the answers come in the order of the requests, whoever writes them. Repeated if a
    one-second rate-limit window ended between the two exchanges (the reserved tokens are the
    old window's: the first request then goes through the app; failed 1 run in 9)."""
    reqs = [_get(BOOK), _get("/api/v1/market/symbols"), _get(f"{BOOK}?depth=2"), _get(BOOK)]

    async def step() -> tuple[list[bytes], list[bytes], int]:
        first = await _exchange(gateway.port, [_get(BOOK)])  # fills the micro-cache, reserves
        before = HeaderTimeoutProtocol.answered_now
        answers = await _exchange(gateway.port, reqs)
        return first, answers, HeaderTimeoutProtocol.answered_now - before

    first, answers, answered = await _in_one_window(step)
    assert answered >= 1  # the first of them at least
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert answers[0].endswith(first[0].split(b"\r\n\r\n", 1)[1])
    assert b'"symbol":"PA-USD"' in answers[1] and b'"bids"' not in answers[1]
    assert answers[2].count(b'"bids":[[') == 1 and b'"depth":2' in answers[2]
    assert answers[3].endswith(first[0].split(b"\r\n\r\n", 1)[1])


async def test_what_the_protocol_cannot_decide_goes_to_the_app(gateway: Gateway) -> None:
    """Other methods, HTTP/1.0, unknown symbols, bad parameters, unknown keys: none is
    answered in the protocol, and each gets the app's documented answer."""
    await _exchange(gateway.port, [_get(BOOK)])  # the body cached, a token reserved
    before = HeaderTimeoutProtocol.answered_now
    cases = [
        (_get("/api/v1/market/NOPE-USD/orderbook"), b"HTTP/1.1 404 Not Found"),
        (_get(f"{BOOK}?depth=x"), b"HTTP/1.1 422 Unprocessable Entity"),
        (_get(BOOK, "X-API-Key: nobody"), b"HTTP/1.1 401 Unauthorized"),
    ]
    for req, status in cases:
        (answer,) = await _exchange(gateway.port, [req])
        assert answer.startswith(status + b"\r\n"), answer[:200]
    for target, status in [
        (f"GET {BOOK} HTTP/1.0\r\nHost: t\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
        (f"HEAD {BOOK} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"HTTP/1.1 405 "),
        (f"POST {BOOK} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"HTTP/1.1 405 "),
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(target.encode())
        closed = await asyncio.wait_for(reader.read(), 10)  # closed after the answer
        writer.close()
        assert closed.startswith(status), closed[:200]
    assert HeaderTimeoutProtocol.answered_now == before


async def test_no_micro_cache_means_no_answer_in_protocol(redis_settings: Settings) -> None:
    await _seed(redis_settings)
    cfg = dataclasses.replace(_config(), microcache_ms=0)
    async for g in _serve(redis_settings, cfg):
        before = HeaderTimeoutProtocol.answered_now
        answers = await _exchange(g.port, [_get(BOOK)] * 3)
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
        assert HeaderTimeoutProtocol.answered_now == before


async def test_hit_now_counts_only_tokens_in_hand(redis_settings: Settings) -> None:
    """The limiter's decision without a wait: None (and nothing counted) until a reservation
    made by an awaited hit is in hand; then the next counts of that reservation."""
    from gateway_rest.ratelimit import RateLimiter

    r = aioredis.Redis.from_url(redis_settings.redis_url)
    try:
        lim = RateLimiter(r, CacheKeys(redis_settings.redis_prefix))
        tier = Tier("t", limit=1000)
        for _ in range(5):
            window = int(time.time())
            who = f"ip:hit-now-{uuid.uuid4().hex[:6]}"
            assert lim.hit_now(who, tier.limit) is None
            first = await lim.hit(who, tier.limit)
            second = lim.hit_now(who, tier.limit)
            stored = await r.get(CacheKeys(redis_settings.redis_prefix).ratelimit(who, window))
            if int(time.time()) == window:
                break
        assert first.remaining == tier.limit - 1
        assert second is not None and second.allowed and second.remaining == tier.limit - 2
        assert stored is not None and int(stored) == chunk_for(
            tier.limit
        )  # one reservation, nothing counted twice
    finally:
        await r.aclose()
