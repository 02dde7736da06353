"""Capture and replay: a source writes the platform's capture format with ``--capture``; the replay
source publishes it again, event for event (same event times, so derived streams are identical)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import orjson
import pytest

from aggregator.sources.replay import replay
from aggregator.sources.simulator import run_simulator
from aggregator.testing import delete_topics, read_topic
from core.kafka import ensure_topics
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.integration


async def test_capture_then_replay_reproduces_the_input(settings: Settings, tmp_path: Path) -> None:
    cap = tmp_path / "capture.ndjson"
    s = dataclasses.replace(settings, sim_rate=5000.0)
    n = await run_simulator(s, asyncio.Event(), steps=150, ops=False, capture=cap)
    lines = cap.read_bytes().splitlines()
    assert len(lines) == n
    with cap.open("ab") as f:  # a damaged line is skipped, not fatal
        f.write(b'{"recv_ns": 1, "event": {"type": "open"}}\nnot json\n')

    target = dataclasses.replace(
        settings, topic_prefix=f"{settings.topic_prefix}.r{uuid.uuid4().hex[:4]}"
    )
    await ensure_topics(target, partitions=3)
    assert await replay(target, cap, asyncio.Event(), speed=0) == n

    def by_symbol(recs: list) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
            value = orjson.loads(r.value)  # an event, or one action's events (events.py)
            for d in value if isinstance(value, list) else [value]:
                out.setdefault(d["symbol"], []).append(d)
        return out

    original = by_symbol(await read_topic(s, Topics.from_settings(s).input))
    replayed = by_symbol(await read_topic(target, Topics.from_settings(target).input))
    assert set(original) == set(s.symbols)
    for sym in original:
        a = [{k: v for k, v in d.items() if k != "source"} for d in original[sym]]
        b = [{k: v for k, v in d.items() if k != "source"} for d in replayed[sym]]
        assert a == b, sym
    await delete_topics(target)
