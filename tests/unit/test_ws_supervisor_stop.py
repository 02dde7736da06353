"""The multi-process gateway's parent stops its workers together and kills the ones that do
not leave within the grace (a worker closing 16,000 connections outlived a killed parent)."""

from __future__ import annotations

import asyncio
import sys

from gateway_ws.__main__ import _stop_workers

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
LEAVES_ON_TERM = "import time; time.sleep(60)"


async def _start(code: str) -> asyncio.subprocess.Process:
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    await asyncio.sleep(0)
    return p


async def test_workers_stop_together_and_a_stuck_one_is_killed() -> None:
    procs = [await _start(IGNORES_TERM) for _ in range(3)] + [await _start(LEAVES_ON_TERM)]
    await asyncio.sleep(1.0)  # the stuck ones have installed their SIGTERM handler
    await _stop_workers(procs, grace_s=1.0)
    assert [p.returncode for p in procs] == [-9, -9, -9, -15]  # SIGKILL x3; SIGTERM worked
