"""What a benchmark leaves behind, removed when it exits."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from core.kafka import delete_prefix_topics
from core.settings import Settings


def drop_topics_at_exit(s: Settings) -> None:
    """For ``atexit``: delete the run's topics (``<prefix>.*``), whatever ended the run. Left
    behind, every run's 9-11 topics cost each client of the platform a larger metadata decode at
    every refresh, and the broker file handles (700 of them had piled up on this machine)."""
    with contextlib.suppress(Exception):
        n = asyncio.run(delete_prefix_topics(s))
        print(f"[cleanup] deleted {n} topics of {s.topic_prefix}", file=sys.stderr)
