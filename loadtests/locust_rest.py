"""Locust REST users: every public endpoint with the weights of a market-data client.

    make load-rest                                 # web UI on :8089
    make load-rest-headless                        # python -m loadtests.run_locust rest (CSV + HTML)
    .venv/bin/locust -f loadtests/locust_rest.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 30s

Weights (requests per 100): order book 35 (depth 20 mostly, some 5/50/100), ticker 25, recent
trades 15, candles 10 (1m over the last hour, sometimes 5m/15m/1h over a day), 24h stats 7,
symbols 5, health 3. Request names group by endpoint (``/{symbol}/orderbook?depth=20``), not by
symbol, so locust reports one line per endpoint. A 429 (rate limited) counts as a failure named
as such: raise the anonymous limit or set ``LOCUST_API_KEY`` (sent in ``LOCUST_API_KEY_HEADER``,
default ``X-API-Key``) for load runs. Each user thinks 0.1-0.5 s between requests
(``LOCUST_WAIT_MIN``/``LOCUST_WAIT_MAX``), so users x ~3 is the offered request rate.
"""

from __future__ import annotations

import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from locust import FastHttpUser, between, events, task

API = "/api/v1/market"
sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # locust puts only loadtests/ on the path
from loadtests.locust_common import symbols_from_env  # noqa: E402


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class MarketDataApiUser(FastHttpUser):
    wait_time = between(
        float(os.environ.get("LOCUST_WAIT_MIN", "0.1")),
        float(os.environ.get("LOCUST_WAIT_MAX", "0.5")),
    )

    def on_start(self) -> None:
        self.rng = random.Random()
        key = os.environ.get("LOCUST_API_KEY")
        self.headers = {os.environ.get("LOCUST_API_KEY_HEADER", "X-API-Key"): key} if key else {}
        self.symbol_names = symbols_from_env()  # (``symbols`` is the task below)
        # discover the catalogue once per user, as a real client would
        with self.client.get(
            f"{API}/symbols", name=f"{API}/symbols", headers=self.headers, catch_response=True
        ) as r:
            if self._check(r):
                found = _symbol_names(r.json())
                if found:
                    self.symbol_names = found

    def _check(self, r: Any, *, want: str | None = None) -> bool:
        if r.status_code == 429:
            r.failure(f"429 rate limited (Retry-After {r.headers.get('Retry-After')})")
            return False
        if r.status_code != 200:
            r.failure(f"HTTP {r.status_code}: {(r.text or '')[:120]}")
            return False
        try:
            body = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            r.failure("response is not JSON")
            return False
        if want and want not in _keys(body):
            r.failure(f"response has no {want!r}")
            return False
        r.success()
        return True

    def _get(self, path: str, name: str, want: str | None = None) -> None:
        with self.client.get(path, name=name, headers=self.headers, catch_response=True) as r:
            self._check(r, want=want)

    def _sym(self) -> str:
        return self.rng.choice(self.symbol_names)

    @task(35)
    def orderbook(self) -> None:
        depth = self.rng.choices((20, 5, 50, 100), weights=(70, 15, 10, 5))[0]
        self._get(
            f"{API}/{self._sym()}/orderbook?depth={depth}",
            f"{API}/{{symbol}}/orderbook?depth={depth}",
            "bids",
        )

    @task(25)
    def ticker(self) -> None:
        self._get(f"{API}/{self._sym()}/ticker", f"{API}/{{symbol}}/ticker")

    @task(15)
    def trades(self) -> None:
        limit = self.rng.choice((100, 100, 50, 500))
        self._get(f"{API}/{self._sym()}/trades?limit={limit}", f"{API}/{{symbol}}/trades?limit=N")

    @task(10)
    def candles(self) -> None:
        now = datetime.now(UTC)
        interval, span = self.rng.choices(
            (
                ("1m", timedelta(hours=1)),
                ("5m", timedelta(hours=6)),
                ("15m", timedelta(days=1)),
                ("1h", timedelta(days=1)),
            ),
            weights=(60, 15, 15, 10),
        )[0]
        q = f"interval={interval}&start={_iso(now - span)}&end={_iso(now)}"
        self._get(
            f"{API}/{self._sym()}/candles?{q}", f"{API}/{{symbol}}/candles?interval={interval}"
        )

    @task(7)
    def stats(self) -> None:
        self._get(f"{API}/{self._sym()}/stats", f"{API}/{{symbol}}/stats")

    @task(5)
    def symbols(self) -> None:
        self._get(f"{API}/symbols", f"{API}/symbols")

    @task(3)
    def health(self) -> None:
        with self.client.get("/health", name="/health", catch_response=True) as r:
            if r.status_code == 200:
                r.success()
            else:
                r.failure(f"HTTP {r.status_code}")


def _keys(body: Any) -> set[str]:
    """Top-level keys, and those of a ``data`` envelope, so either response shape is accepted."""
    if not isinstance(body, dict):
        return set()
    keys = set(body)
    if isinstance(body.get("data"), dict):
        keys |= set(body["data"])
    return keys


def _symbol_names(body: Any) -> list[str]:
    items = body.get("symbols", body.get("data", [])) if isinstance(body, dict) else body
    out = []
    for it in items if isinstance(items, list) else []:
        name = it.get("symbol") if isinstance(it, dict) else it
        if isinstance(name, str):
            out.append(name)
    return out


@events.quitting.add_listener
def _write_summary(environment: Any, **_kw: Any) -> None:
    """Aggregated throughput and percentiles, for loadtests/run_locust.py."""
    from locust.runners import WorkerRunner

    path = os.environ.get("LOCUST_SUMMARY_JSON")
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    t = environment.stats.total
    out = {
        "requests": t.num_requests,
        "requests_per_s": t.total_rps,
        "p50_ms": t.get_response_time_percentile(0.50),
        "p95_ms": t.get_response_time_percentile(0.95),
        "p99_ms": t.get_response_time_percentile(0.99),
        "failures": t.num_failures,
        "rate_limited": sum(
            n
            for (err, n) in ((e.error, e.occurrences) for e in environment.stats.errors.values())
            if "429" in str(err)
        ),
    }
    with open(path, "wb") as f:
        f.write(orjson.dumps(out))
