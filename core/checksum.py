"""Book checksum, modelled on Kraken's v2 book checksum.

The checksummed string is built from the top ``depth`` (default 10) levels *as published*
(the exact price and size strings of the messages):

1. asks, best (lowest) first, then bids, best (highest) first;
2. for each level: the price string with ``.`` removed and leading zeros stripped, then the
   size string treated the same way, appended with no separator;
3. ``checksum = zlib.crc32(string.encode("ascii"))`` as an unsigned 32-bit integer.

Example: asks ``[["0.05005","0.00000500"]]`` and bids ``[["0.05004","1.2"]]`` give
``"5005" + "500" + "5004" + "12"`` = ``"5005500500412"``. An empty book checksums the empty string (0).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable


def _strip(s: str) -> str:
    return s.replace(".", "").lstrip("0")


def level_part(price: str, size: str) -> str:
    """One level's share of the checksummed string (step 2); a book may remember it per level
    until the level's size changes (``core/l3book.py``)."""
    return _strip(price) + _strip(size)


def crc_of_parts(parts: list[str]) -> int:
    """The checksum of the level parts, asks then bids, best first (step 3)."""
    return zlib.crc32("".join(parts).encode("ascii")) & 0xFFFFFFFF


def checksum_string(asks: Iterable[tuple[str, str]], bids: Iterable[tuple[str, str]]) -> str:
    parts: list[str] = []
    for p, q in asks:
        parts.append(_strip(p))
        parts.append(_strip(q))
    for p, q in bids:
        parts.append(_strip(p))
        parts.append(_strip(q))
    return "".join(parts)


def book_checksum(asks: Iterable[tuple[str, str]], bids: Iterable[tuple[str, str]]) -> int:
    return zlib.crc32(checksum_string(asks, bids).encode("ascii")) & 0xFFFFFFFF
