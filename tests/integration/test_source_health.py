"""A feed connector as a process: health turns 503 when the feed goes silent, metrics per product,
raw frames per product, and the API key never reaches its logs.

``python -m aggregator.sources.coinbase_at`` runs as production does (settings from the
environment, a CDP key file), against the Advanced Trade mock served by this test, publishing
to this test's own topics on the real Kafka. Grace and idle limits are shortened by setting
(``MD_SOURCE_GRACE_S``/``MD_SOURCE_IDLE_S``; defaults 300 s and 60 s as the ingestion document
asks).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from aggregator.sources.coinbase_at_mock import AtMockConfig, serve_at_mock
from aggregator.sources.coinbase_auth import generate_test_credentials
from aggregator.sources.feed_monitor import read_raw_capture
from tests.conftest import free_port
from tests.helpers import eventually, stop_procs
from tests.integration.test_agg_coinbase import RECORDING

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def status(url: str) -> int:
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            return (await c.get(url)).status_code
    except httpx.HTTPError:
        return 0


async def test_connector_health_metrics_raw_capture_and_no_key_in_logs(
    env_for: dict[str, str], tmp_path: Path
) -> None:
    creds = generate_test_credentials("organizations/test/apiKeys/health")
    pem = creds._key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    key_file = tmp_path / "cdp_api_key.json"
    key_file.write_text(json.dumps({"name": creds.name, "privateKey": pem.decode()}))
    secret_line = pem.decode().splitlines()[1]  # a line of the key body: must never be logged

    mock = AtMockConfig(
        path=RECORDING,
        port=free_port(),
        speed=1,
        loop=True,
        public_key=creds.public_pem(),
        key_name=creds.name,
    )
    ex, server = await serve_at_mock(mock)
    http = free_port()
    env = dict(
        env_for,
        MD_COINBASE_AT_URL=f"ws://127.0.0.1:{mock.port}",
        MD_COINBASE_AT_PRODUCTS=",".join(ex.products),
        MD_COINBASE_AT_KEY_FILE=str(key_file),
        MD_COINBASE_AT_HTTP_PORT=str(http),
        MD_SOURCE_GRACE_S="1",
        MD_SOURCE_IDLE_S="3",
        MD_SOURCE_RAW_CAPTURE_DIR=str(tmp_path / "raw"),
        MD_LOG_LEVEL="DEBUG",
    )
    log_path = tmp_path / "coinbase_at.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - once; reaped in a thread
            [sys.executable, "-m", "aggregator.sources.coinbase_at"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    base = f"http://127.0.0.1:{http}"
    try:
        # flowing: healthy, counted per product
        await eventually(lambda: len(ex.jwts) >= 5, within=30)
        await eventually(lambda: proc.poll() is None and ex.played > 200, within=30)
        assert await status(base + "/health") == 200
        metrics = ""

        async def every_product_counted() -> bool:
            # the recording interleaves products unevenly: 200 frames need not hold each one
            nonlocal metrics
            async with httpx.AsyncClient(timeout=5) as c:
                metrics = (await c.get(base + "/metrics")).text
            return all(
                f'md_source_messages_total{{product="{p}",source="coinbase_at"}}' in metrics
                for p in ex.products
            )

        await eventually(every_product_counted, within=30)
        for p in ex.products:
            assert f'md_source_messages_total{{product="{p}",source="coinbase_at"}}' in metrics
            assert f'md_source_last_message_timestamp_seconds{{product="{p}"' in metrics
        assert 'md_source_processing_seconds_count{source="coinbase_at"}' in metrics
        assert ex.auth_failures == 0  # the key file's key signed every subscribe

        # the feed goes away: past the grace, a silent minute (3 s here) is a 503
        server.close()
        await server.wait_closed()

        async def unhealthy() -> bool:
            return await status(base + "/health") == 503

        await eventually(unhealthy, within=30, interval=0.25)
        async with httpx.AsyncClient(timeout=5) as c:
            body = (await c.get(base + "/health")).json()
        assert body["checks"]["feed_messages"]["ok"] is False
        assert body["checks"]["feed_messages"]["detail"]["last_message_s"] >= 3
        async with httpx.AsyncClient(timeout=5) as c:
            assert (await c.get(base + "/health/live")).status_code == 200  # no restart
    finally:
        server.close()
        ex.play_task.cancel()  # type: ignore[attr-defined]
        await asyncio.to_thread(stop_procs, [proc], 10)
    frames = read_raw_capture(tmp_path / "raw" / f"coinbase_at-{ex.products[0]}.ndjson")
    assert frames and all(ex.products[0] in f for _, f in frames)
    logs = log_path.read_text()
    assert "coinbase advanced trade connected" in logs
    assert secret_line not in logs and "PRIVATE KEY" not in logs
    assert not any(token in logs for token in ex.jwts)  # nor the signed tokens
