"""Helpers shared by the integration tests that run the services as real processes.

Kept out of the test modules so that a fix (a health check that hangs, a certificate a newer
``cryptography`` refuses) is made once for every test that needs it.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import orjson

from core.book import L2Book

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aggregator.testing import StreamCheck
    from core.cache_keys import CacheKeys
    from core.follower import Reset, StreamFollower
    from storage.cache_model import Writes


def wait_http(
    url: str,
    procs: dict[str, subprocess.Popen[bytes]],
    logs: Path | None = None,
    within: float = 60.0,
    interval: float = 0.2,
) -> None:
    """Poll ``url`` until it answers 200, failing fast when one of ``procs`` has exited.

    A service that dies on start-up would otherwise cost the whole ``within`` wait; with ``logs``
    (a folder of ``<name>.log``) the failure carries the tail of the dead process's log.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                tail = f":\n{(logs / f'{name}.log').read_text()[-3000:]}" if logs else ""
                raise AssertionError(f"{name} exited with {p.returncode}{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError(f"{url} not healthy within {within}s")


def self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A throwaway EC certificate for ``localhost`` and its key, as PEM files in ``tmp``.

    For the TLS tests of the gateways: clients trust it with ``cafile=cert``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def eventually(pred: Callable[[], object], within: float, interval: float = 0.05) -> None:
    """Poll ``pred`` (a plain or an async function) until it is true, for at most ``within`` s.

    For state another task or process reaches in its own time (a consumer catching up, a
    service coming back): the tests assert on the end state, not on how long it took.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await _holds(pred):
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(interval)


async def run_until(
    worker: Any, pred: Callable[[], object], within: float, failure: Callable[[], str]
) -> None:
    """Run ``worker.run(stop)`` as a task until ``pred`` holds, then stop it and wait for it.

    A worker that crashes fails the test with its own exception at once, not after ``within``;
    ``failure()`` is the message on timeout (typically the worker's counters).
    """
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    try:
        while not await _holds(pred):
            if task.done():
                task.result()
            assert loop.time() < end, failure()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _holds(pred: Callable[[], object]) -> bool:
    got = pred()
    if inspect.isawaitable(got):
        got = await got
    return bool(got)


async def put_cache_writes(r: Redis, k: CacheKeys, w: Writes) -> None:
    """Store a ``CacheModel``'s symbols, books and strings in Redis as the cache writer would.

    Lets the REST tests seed the cache from the real model without running Kafka or the writer.
    """
    await r.hset(k.symbols, mapping=w.symbols)  # type: ignore[arg-type]
    for sym, fields in w.books.items():
        await r.hset(k.book(sym), mapping=fields)  # type: ignore[arg-type]
    for suffix, body in w.strings.items():
        await r.set(f"{k.prefix}:{suffix}", body)


async def stream_entries(r: Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE of the whole stream ``key`` (redis-py annotates the sync and async answers as one
    union with ``None``; the async client without decode_responses answers this)."""
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(key))


def stop_procs(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process still running, then reap each, killing any that outlives ``timeout``.

    All are signalled before any is waited for, so they shut down in parallel.
    """
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def check_follower(follower: StreamFollower, seen: StreamCheck) -> list[Reset]:
    """Feed every message ``follower`` delivers to ``seen``; a (re)join resets the check to its
    snapshot (seq, epoch, l2 book). Returns the resets as they come."""
    resets: list[Reset] = []

    def on_message(ch: str, sym: str, seq: int, raw: bytes, parsed: dict[str, Any]) -> None:
        seen.feed(raw)

    follower.add_callback(on_message)

    def on_reset(r: Reset) -> None:
        resets.append(r)
        seen.last_seq[(r.channel, r.symbol)] = r.seq
        seen.epochs[(r.channel, r.symbol)] = r.epoch
        cur = follower.current(r.channel, r.symbol)
        if r.channel == "l2" and cur is not None:
            data = orjson.loads(cur.messages[0])["data"]
            seen.books.setdefault(r.symbol, L2Book()).load(data["bids"], data["asks"])

    follower.add_reset_callback(on_reset)
    return resets


class AckProducer:
    """A producer whose sends return futures the test settles (Kafka's acknowledgements), for
    the source publisher's tests."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
