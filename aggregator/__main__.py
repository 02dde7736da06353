"""``python -m aggregator [--http-port N] [--feed-port M]``: one aggregator instance (/health,
/health/live, /health/ready and /metrics on MD_AGGREGATOR_HTTP_PORT, the direct feed on
MD_AGG_FEED_PORT; a second instance of the pair on the same machine needs its own ports)."""

from __future__ import annotations

import argparse
import asyncio

from aggregator.service import Aggregator
from core.health import LIVENESS
from core.ops_http import start_ops_server
from core.service import run
from core.settings import Settings


async def _main(stop: asyncio.Event) -> None:
    ap = argparse.ArgumentParser(prog="python -m aggregator")
    ap.add_argument("--http-port", type=int, default=None)
    ap.add_argument("--feed-port", type=int, default=None, help="direct feed (MD_AGG_FEED_PORT)")
    args = ap.parse_args()
    settings = Settings.from_env()
    agg = Aggregator(settings, feed_port=args.feed_port)
    # "consumer" fails when the poll loop has not turned for 30 s or a fatal error stopped it:
    # the process itself is stuck, which a restart fixes (the standby leads meanwhile), so it is
    # a liveness check. Polls return empty while Kafka is unreachable (the loop keeps turning),
    # but a producer flush may hold it longer: the liveness probes give it another minute
    # (deploy/k8s/41-aggregator.yaml)
    agg.health.set_kind("consumer", LIVENESS)
    port = args.http_port or settings.aggregator_http_port
    server = await start_ops_server(agg.health, settings.ops_host, port)
    try:
        await agg.run(stop)
    finally:
        server.close()


def main() -> None:
    run(_main, service="aggregator")


if __name__ == "__main__":
    main()
