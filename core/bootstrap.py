"""``python -m core.bootstrap``: create the Kafka topics (idempotent). Run by ``make run``/``make test``."""

from __future__ import annotations

import asyncio
import sys

from core.kafka import ensure_topics
from core.settings import Settings


async def _main() -> None:
    created = await ensure_topics(Settings.from_env())
    print(f"[bootstrap] topics ready ({len(created)} created)", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(_main())
