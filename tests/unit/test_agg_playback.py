"""Playback: a recorded ``md.in`` input through the derivation gives the golden output.

``tests/fixtures/playback`` holds real input (the simulator's seeded order flow and the first
messages of the 2021 Coinbase recording, normalized) and the output recorded from it: every
data message, every snapshot and the checkpoint state. Any change to a message shape, a
sequence number, a checksum or the saved state shows here as the first differing line.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.fixtures.playback.record import play

HERE = Path(__file__).parents[1] / "fixtures" / "playback"


def _lines(name: str) -> list[bytes]:
    return gzip.decompress((HERE / name).read_bytes()).splitlines()


def test_recorded_input_gives_the_golden_output() -> None:
    got = play(_lines("input.ndjson.gz"))
    want = _lines("golden.ndjson.gz")
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert g == w, f"golden line {i + 1} differs"
    assert len(got) == len(want)
