"""Redis key names are spelled in one place, core/cache_keys.py: no other module of the
platform builds ``<prefix>:...`` or a key kind by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from core.cache_keys import RELATIVE, CacheKeys

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "aggregator", "gateway_ws", "gateway_rest", "fix_gateway", "storage")
# the kinds of core/cache_keys.py, as they would appear hand-built
KINDS = ("book", "l3", "ticker", "stats", "candle", "trades", "trades_seq", "hist", "rl")
HAND_BUILT = re.compile(rf"prefix\}}:|^:?({'|'.join(KINDS)}):$|^:(symbols|cache:alive)$")


def _hand_built_keys(p: Path) -> list[str]:
    """f-strings of ``p`` that put a prefix before ``:`` or hold a key kind between colons."""
    out = []
    for n in ast.walk(ast.parse(p.read_text())):
        if not isinstance(n, ast.JoinedStr):
            continue
        text = ast.unparse(n)
        parts = [v.value for v in n.values if isinstance(v, ast.Constant)]
        if "prefix}:" in text or any(isinstance(x, str) and HAND_BUILT.search(x) for x in parts):
            out.append(f"{p.name}:{n.lineno}: {text}")
    return out


def test_no_module_but_cache_keys_builds_a_redis_key() -> None:
    found = [
        hit
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p != ROOT / "core" / "cache_keys.py"
        for hit in _hand_built_keys(p)
    ]
    assert found == []


def test_the_scan_sees_a_hand_built_key(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text('k = f"{prefix}:ticker:{sym}"\nh = f"{p}:hist:{c}:{s}"\nok = f"{a}:{b}"\n')
    assert [h.split(":")[1] for h in _hand_built_keys(f)] == ["1", "2"]


def test_relative_names_under_a_prefix_are_the_prefixed_names() -> None:
    k = CacheKeys("md")
    assert k.under(RELATIVE.ticker("BTC-USD")) == k.ticker("BTC-USD") == "md:ticker:BTC-USD"
    assert k.under(RELATIVE.candle("1m", "X")) == k.candle("1m", "X")
    assert k.hist("l2", "X") == "md:hist:l2:X" and k.symbols == "md:symbols"
