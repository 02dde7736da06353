"""Run the platform's source slot on a Coinbase recording: mock feed + connector in one process.

``python -m aggregator.sources.recording [FILE]`` (default ``MD_RECORDING_FILE``, else
``../shared/data/coinbase-ws-2021-04-17.ndjson``). The mock (``coinbase_mock``) serves the file on
``MD_COINBASE_MOCK_PORT`` (8020) at ``MD_RECORDING_SPEED`` (1 = recorded pace) in a loop, and the
real connector (``coinbase``) subscribes to it exactly as it would to Coinbase, so everything
downstream is the production path. ``/health`` and ``/metrics`` on ``MD_SIMULATOR_HTTP_PORT``
(8013): this process takes the simulator's place (``MD_SOURCE=recording``; ``make run-recording``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aggregator.sources.coinbase import CoinbaseClient, CoinbaseConfig
from aggregator.sources.coinbase_mock import MockConfig, serve_mock
from aggregator.sources.feed_monitor import monitor_from_settings
from aggregator.sources.publish import EventPublisher
from core.health import INFO, READINESS, Health
from core.ops_http import start_ops_server
from core.settings import Settings, parse_bool

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = ROOT.parent / "shared" / "data" / "coinbase-ws-2021-04-17.ndjson"
DEFAULT_CATALOGUE = ROOT.parent / "shared" / "data" / "coinbase-products-2021-04-17.json"


async def run_recording(
    settings: Settings,
    stop: asyncio.Event,
    path: Path | None = None,
    *,
    ops: bool = True,
    capture: Path | None = None,
) -> None:
    path = path or Path(settings.get("MD_RECORDING_FILE", str, str(DEFAULT_FILE)))
    port = settings.get("MD_COINBASE_MOCK_PORT", int, 8020)
    mock_cfg = MockConfig(
        path=path,
        port=port,
        speed=settings.get("MD_RECORDING_SPEED", float, 1.0),
        loop=settings.get("MD_RECORDING_LOOP", parse_bool, True),
    )
    ex, server = await serve_mock(mock_cfg)
    cat = settings.get("MD_COINBASE_CATALOGUE", str, str(DEFAULT_CATALOGUE))
    cfg = CoinbaseConfig(
        url=f"ws://127.0.0.1:{port}", products=tuple(ex.products), catalogue=Path(cat)
    )
    pub = EventPublisher(settings, "coinbase", capture=capture)
    await pub.start()
    monitor = monitor_from_settings(settings, "coinbase", ex.products)
    client = CoinbaseClient(cfg, pub, monitor=monitor)
    health = Health("recording")
    health.add("feed_messages", monitor.healthy, kind=READINESS)  # 503: a minute of silence
    health.add(
        "feed",
        lambda: (client.connected, {"products": list(ex.products), "played": ex.played}),
        kind=INFO,
    )
    ops_server = (
        await start_ops_server(health, settings.ops_host, settings.simulator_http_port)
        if ops
        else None
    )
    try:
        await client.run(stop)
    finally:
        if ops_server is not None:
            ops_server.close()
        server.close()
        ex.play_task.cancel()  # type: ignore[attr-defined]
        monitor.close()
        await pub.stop()


def main() -> None:
    from core.service import run

    if len(sys.argv) > 2 and sys.argv[1] == "--list-products":  # for `make run-recording`
        from aggregator.sources.coinbase_mock import load_recording

        prods = {
            m["product_id"]
            for _, m in load_recording(Path(sys.argv[2]))
            if isinstance(m.get("product_id"), str)
        }
        print(",".join(sorted(prods)))
        return
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else None

    async def _main(stop: asyncio.Event) -> None:
        await run_recording(Settings.from_env(), stop, path)

    run(_main, service="recording")


if __name__ == "__main__":
    main()
