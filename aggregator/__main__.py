"""``python -m aggregator``: the aggregator process (/health and /metrics on MD_AGGREGATOR_HTTP_PORT)."""

from __future__ import annotations

import asyncio

from aggregator.service import Aggregator
from core.ops_http import start_ops_server
from core.service import run
from core.settings import Settings


async def _main(stop: asyncio.Event) -> None:
    settings = Settings.from_env()
    agg = Aggregator(settings)
    server = await start_ops_server(agg.health, settings.ops_host, settings.aggregator_http_port)
    try:
        await agg.run(stop)
    finally:
        server.close()


def main() -> None:
    run(_main, service="aggregator")


if __name__ == "__main__":
    main()
