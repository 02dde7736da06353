"""What every feed connector reports about its upstream: health, per-product metrics, raw capture.

The ingestion document asks for:

- ``/health`` answering 503 when no message arrived in the last minute, after a start-up grace
  of five minutes (a feed that never connected is not "down" while the process is starting, and
  quiet products at night still get heartbeats, so a minute of silence means a dead feed).
  :meth:`FeedMonitor.health_check` is a *readiness* check (core/health.py): an absent upstream
  makes the source not ready, it never restarts it.
- per-product message counters (``md_source_messages_total``), a last-message timestamp gauge
  (``md_source_last_message_timestamp_seconds``, Unix seconds: alert on ``time() - x > 60``) and a
  processing-time histogram (``md_source_processing_seconds``: parse + publish of one frame).
- raw feed frames captured per product (not only the normalized events ``--capture`` writes):
  :class:`RawCapture` appends each frame, exactly as received, to ``<dir>/<source>-<product>.ndjson``
  as ``{"recv_ns": int, "raw": "<frame>"}``; frames about no product (heartbeats,
  subscription acknowledgements, errors) go to ``<source>-_connection.ndjson``. A frame about
  several products (Advanced Trade batches) is written to each of their files.
  One open file per product: bounded by the configured product list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "md_source_messages_total", "feed frames received, per product", ["source", "product"]
)
LAST_MESSAGE = Gauge(
    "md_source_last_message_timestamp_seconds",
    "Unix time of the last feed frame, per product",
    ["source", "product"],
)
PROCESSING = Histogram(
    "md_source_processing_seconds",
    "time to parse one feed frame and hand its events to the publisher",
    ["source"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
)

NO_PRODUCT = "_connection"
IDLE_S = 60.0  # the ingestion document: unhealthy after a minute without a message
GRACE_S = 300.0  # ... once five minutes have passed since start


class RawCapture:
    """Raw frames per product, for replaying a feed byte for byte (see the module docstring)."""

    def __init__(self, directory: Path, source: str, products: Iterable[str] = ()) -> None:
        self.directory = directory
        self.source = source
        self.only = frozenset(products)  # empty: every product
        self.files: dict[str, IO[bytes]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path_of(self, product: str) -> Path:
        return self.directory / f"{self.source}-{product}.ndjson"

    def write(self, raw: bytes | str, products: Iterable[str], recv_ns: int) -> None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        line = orjson.dumps({"recv_ns": recv_ns, "raw": text}) + b"\n"
        wrote = False
        for p in products:
            if self.only and p not in self.only:
                continue
            self._file(p).write(line)
            wrote = True
        if not wrote and not self.only:
            self._file(NO_PRODUCT).write(line)

    def _file(self, product: str) -> IO[bytes]:
        f = self.files.get(product)
        if f is None:
            f = self.files[product] = self.path_of(product).open("ab")
        return f

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def read_raw_capture(path: Path) -> list[tuple[int, str]]:
    """(recv_ns, frame) per line of one raw capture file."""
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            rec = orjson.loads(line)
            out.append((int(rec["recv_ns"]), str(rec["raw"])))
    return out


class FeedMonitor:
    """Counts frames per product, times their processing, answers the feed health check."""

    def __init__(
        self,
        source: str,
        *,
        idle_s: float = IDLE_S,
        grace_s: float = GRACE_S,
        raw: RawCapture | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.source = source
        self.idle_s = idle_s
        self.grace_s = grace_s
        self.raw = raw
        self.clock = clock
        self.started = clock()
        self.last_message: float | None = None
        self.frames = 0
        self.by_product: dict[str, int] = {}
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        self._hist = PROCESSING.labels(source)

    def frame(self, raw: bytes | str, products: Iterable[str], recv_ns: int) -> None:
        """One frame arrived (call before parsing it: even garbage proves the feed is alive)."""
        self.last_message = self.clock()
        self.frames += 1
        wall = recv_ns / 1e9
        ps = tuple(products) or (NO_PRODUCT,)
        for p in ps:
            self.by_product[p] = self.by_product.get(p, 0) + 1
            c = self._counters.get(p)
            if c is None:
                c = self._counters[p] = MESSAGES.labels(self.source, p)
                self._gauges[p] = LAST_MESSAGE.labels(self.source, p)
            c.inc()
            self._gauges[p].set(wall)
        if self.raw is not None:
            self.raw.write(raw, () if ps == (NO_PRODUCT,) else ps, recv_ns)

    def processed(self, seconds: float) -> None:
        self._hist.observe(seconds)

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy only after the grace period, when the last frame is older than ``idle_s``."""
        now = self.clock()
        age = None if self.last_message is None else now - self.last_message
        in_grace = now - self.started < self.grace_s
        ok = in_grace or (age is not None and age <= self.idle_s)
        detail: dict[str, Any] = {
            "last_message_s": None if age is None else round(age, 2),
            "frames": self.frames,
            "idle_limit_s": self.idle_s,
        }
        if in_grace:
            detail["grace_left_s"] = round(self.grace_s - (now - self.started), 1)
        return ok, detail

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


def monitor_from_settings(s: Any, source: str, products: Iterable[str] = ()) -> FeedMonitor:
    """``MD_SOURCE_IDLE_S`` (60), ``MD_SOURCE_GRACE_S`` (300), ``MD_SOURCE_RAW_CAPTURE_DIR`` (off),
    ``MD_SOURCE_RAW_CAPTURE_PRODUCTS`` (empty: all products)."""
    from core.settings import parse_list

    raw_dir = s.get("MD_SOURCE_RAW_CAPTURE_DIR", str, "")
    raw = (
        RawCapture(Path(raw_dir), source, s.get("MD_SOURCE_RAW_CAPTURE_PRODUCTS", parse_list, ()))
        if raw_dir
        else None
    )
    if raw is not None:
        log.info("capturing raw feed frames", extra={"dir": raw_dir, "source": source})
    return FeedMonitor(
        source,
        idle_s=s.get("MD_SOURCE_IDLE_S", float, IDLE_S),
        grace_s=s.get("MD_SOURCE_GRACE_S", float, GRACE_S),
        raw=raw,
    )
