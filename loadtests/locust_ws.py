"""Locust WebSocket users: connect, (optionally) authenticate, subscribe to a mix of channels and
symbols, check ``seq`` continuity and report end-to-end latency.

    make load-ws                                   # web UI on :8089
    make load-ws-headless                          # python -m loadtests.run_locust ws (CSV + HTML)
    .venv/bin/locust -f loadtests/locust_ws.py --host ws://127.0.0.1:8001 --headless -u 50 -r 10 -t 30s

What each simulated client does (a realistic mix, weights below):

- opens ``<host>/ws`` (``LOCUST_WS_PATH``), reported as request ``WS connect``;
- when ``LOCUST_WS_TOKEN`` is set, authenticates with it (query parameter ``token`` by default,
  or ``{"type":"auth","token":...}`` as the first message with ``LOCUST_WS_AUTH=message``);
- subscribes to a random subset of ``ticker``/``l2``/``trades``/``candles_1m`` on 1-3 symbols
  (``LOCUST_SYMBOLS``, default ``MD_SYMBOLS`` or BTC-USD,ETH-USD,LTC-USD) in one message;
- for every data message: checks ``seq`` is +1 per ``(channel, symbol)`` (a snapshot, a resync or
  a new ``epoch`` restarts the count) and reports a gap or duplicate as a failed request
  ``WS seq``; for every update (not snapshots, whose timestamp is the state's, not the send's)
  reports the latency from the message's own ``timestamp`` (the aggregator's publish time) to
  receipt as request type ``WS-LAT`` named by channel, so locust's percentiles are end-to-end
  latencies and its "requests/s" are delivered messages per second;
- every 10-30 s swaps one subscription for another (subscription churn).

Latency is measured against this machine's clock: in distributed mode, workers on other hosts
need NTP/PTP-synchronised clocks or the numbers include the clock offset (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import random
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import orjson
import websocket  # websocket-client: blocking sockets, cooperative under locust's gevent
from locust import User, between, events, task

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # locust puts only loadtests/ on the path
from loadtests.locust_common import (  # noqa: E402
    SeqGap,
    StreamChecker,
    is_data_message,
    parse_ts,
    pick_subscriptions,
    symbols_from_env,
)

LAT = "WS-LAT"
# what a refused, dropped or closed connection raises (websocket-client's own errors, socket/TLS)
WS_ERRORS = (websocket.WebSocketException, OSError)


class WebSocketUser(User):
    """One market-data client holding one connection for its whole life."""

    wait_time = between(10, 30)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.symbols = symbols_from_env()
        self.checker = StreamChecker()
        self.ws: websocket.WebSocket | None = None
        self.subs: list[str] = []
        self.receiver: gevent.Greenlet | None = None
        self.stopping = False
        self._connect()

    def on_stop(self) -> None:
        self.stopping = True  # the close below is ours: not a disconnect to report
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if self.ws is not None:
            with contextlib.suppress(*WS_ERRORS):
                self.ws.close()

    # -- connection -------------------------------------------------------------------------
    def _url(self) -> str:
        base = (self.host or "ws://127.0.0.1:8001").rstrip("/")
        url = base + os.environ.get("LOCUST_WS_PATH", "/ws")
        token = os.environ.get("LOCUST_WS_TOKEN")
        if token and os.environ.get("LOCUST_WS_AUTH", "query") == "query":
            url += ("&" if "?" in url else "?") + urlencode({"token": token})
        return url

    def _fire(
        self, rtype: str, name: str, ms: float, length: int = 0, exc: Exception | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type=rtype,
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    def _connect(self) -> None:
        t0 = time.perf_counter()
        try:
            # skip_utf8_validation: websocket-client validates UTF-8 in pure Python, which costs more
            # than the rest of the per-message work; orjson rejects invalid UTF-8 anyway
            self.ws = websocket.create_connection(
                self._url(),
                timeout=10,
                enable_multithread=True,
                skip_utf8_validation=True,
                sslopt={"cert_reqs": ssl.CERT_NONE},
            )
        except WS_ERRORS as exc:
            self._fire("WS", "connect", (time.perf_counter() - t0) * 1000, exc=exc)
            self.ws = None
            return
        self._fire("WS", "connect", (time.perf_counter() - t0) * 1000)
        self.checker.reset()  # a new connection starts every stream with a fresh snapshot
        token = os.environ.get("LOCUST_WS_TOKEN")
        if token and os.environ.get("LOCUST_WS_AUTH", "query") == "message":
            self._send({"type": "auth", "token": token})
        self.subs = pick_subscriptions(self.rng, self.symbols)
        self._send({"type": "subscribe", "channels": self.subs})
        self.receiver = gevent.spawn(self._receive_loop)

    def _send(self, obj: dict[str, Any]) -> None:
        if self.ws is not None:
            self.ws.send(orjson.dumps(obj).decode())

    def _receive_loop(self) -> None:
        ws = self.ws
        assert ws is not None
        ws.settimeout(None)
        while True:
            try:
                raw = ws.recv()
            except WS_ERRORS as exc:  # closed by the server or the network
                if self.stopping:
                    return
                self._fire("WS", "disconnect", 0, exc=exc)
                self.ws = None
                gevent.sleep(1 + self.rng.random())
                self._connect()  # reconnects (new subscriptions, counts restart)
                return
            if not raw:
                continue
            now = time.time()
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                self._fire("WS", "bad json", 0, exc=exc)
                continue
            self.on_message(msg, now, len(raw))

    def on_message(self, msg: dict[str, Any], now: float, size: int) -> None:
        mtype = msg.get("type")
        if mtype == "error":
            self._fire(
                "WS", f"error {msg.get('code')}", 0, exc=RuntimeError(str(msg.get("message")))
            )
            return
        if mtype in ("subscribed", "unsubscribed", "resync"):
            self.checker.observe(msg)
            return
        if not is_data_message(msg):
            return
        if (msg.get("channel"), msg.get("symbol")) in self.checker.pending:
            return  # in flight from an earlier subscription of the same stream
        problem = self.checker.observe(msg)
        if problem:
            self._fire("WS", "seq", 0, exc=SeqGap(problem))
        if str(mtype).endswith("_snapshot") or msg.get("resync") or msg.get("snapshot"):
            return
        ts = msg.get("timestamp")
        if isinstance(ts, str):
            self._fire(LAT, str(msg.get("channel")), max(0.0, (now - parse_ts(ts)) * 1000), size)

    # -- behaviour ----------------------------------------------------------------------------
    @task
    def churn(self) -> None:
        """Swap one subscription for another, as a user clicking through symbols does."""
        if self.ws is None:
            self._connect()
            return
        if not self.subs:
            return
        old = self.rng.choice(self.subs)
        new = self.rng.choice(pick_subscriptions(self.rng, self.symbols))
        if new in self.subs:
            return
        ch, sym = old.split(":", 1)
        self._send({"type": "unsubscribe", "channels": [old]})
        self.checker.forget(ch, sym)
        nch, nsym = new.split(":", 1)
        self.checker.expect(nch, nsym)
        self._send({"type": "subscribe", "channels": [new]})
        self.subs = sorted((set(self.subs) - {old}) | {new})


@events.quitting.add_listener
def _write_summary(environment: Any, **_kw: Any) -> None:
    """All channels' latencies merged into one distribution, for loadtests/run_locust.py."""
    from locust.runners import WorkerRunner

    path = os.environ.get("LOCUST_SUMMARY_JSON")
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    from locust.stats import StatsEntry

    merged = StatsEntry(environment.stats, "all channels", LAT, use_response_times_cache=False)
    for (_name, method), entry in environment.stats.entries.items():
        if method == LAT:
            merged.extend(entry)
    seq = environment.stats.entries.get(("seq", "WS"))
    out = {
        "messages": merged.num_requests,
        "messages_per_s": merged.total_rps,
        "p50_ms": merged.get_response_time_percentile(0.50),
        "p95_ms": merged.get_response_time_percentile(0.95),
        "p99_ms": merged.get_response_time_percentile(0.99),
        "seq_problems": seq.num_failures if seq else 0,
        "failures": environment.stats.total.num_failures,
    }
    with open(path, "wb") as f:
        f.write(orjson.dumps(out))
