"""Every default written in a configuration table of README.md or docs/*.md is the code's.

tests/unit/test_core_env_names.py keeps the names of the tables and the code in step, and
compares the README's defaults with ``core.settings.Settings``. The services' own settings
(``gateway_ws.config``, ``gateway_rest.config``, ``fix_gateway.config``, the storage writers,
the aggregator) and the tables of docs/*.md were compared by nobody. The check here is
behavioural, so it needs no map from variable to field: set a variable to its documented
default and build every process's configuration; if anything differs from the build without
the variable, the table and the code disagree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aggregator.service import ServiceConfig
from core.errors import MarketDataError
from core.settings import Settings
from core.topics import Topics
from fix_gateway.config import GatewayConfig as FixConfig
from gateway_rest.config import RestConfig
from gateway_ws.config import WsConfig
from storage.cache_writer import CacheWriterConfig
from storage.db_writer import DbWriterConfig

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `(MD_[A-Z0-9_]+)` \| ([^|]*) \|")
NUMBER = re.compile(r"-?\d+(\.\d+)?")
# what each process builds from the environment at start (Settings without ``extra``: that
# holds the raw variables themselves, so it always differs)
BUILDERS: dict[str, Callable[[Settings], object]] = {
    "core.settings.Settings": lambda s: dataclasses.replace(s, extra={}),
    "core.topics.Topics": Topics.from_settings,
    "aggregator.service.ServiceConfig": ServiceConfig.from_settings,
    "gateway_ws.config.WsConfig": WsConfig.from_settings,
    "gateway_rest.config.RestConfig": RestConfig.from_settings,
    "fix_gateway.config.GatewayConfig": FixConfig.from_settings,
    "storage.cache_writer.CacheWriterConfig": CacheWriterConfig.from_settings,
    "storage.db_writer.DbWriterConfig": DbWriterConfig.from_settings,
}


def documented_defaults() -> list[tuple[str, str, str]]:
    """(name, default, file) of each table row ``| `MD_X` | default | ...`` whose default is
    one literal value: a backticked one or a bare number (prose like "number of cores" and
    placeholders like ``<prefix>.aggregator`` are not values to set)."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            m = ROW.match(line)
            if not m:
                continue
            cell = m.group(2).strip()
            quoted = re.fullmatch(r"`([^`]*)`", cell)
            value = quoted.group(1) if quoted else cell if NUMBER.fullmatch(cell) else None
            if value is not None and "<" not in value:
                out.append((m.group(1), value, doc.name))
    return out


def built(env: Mapping[str, str]) -> dict[str, object]:
    s = Settings.from_env(env)
    return {name: build(s) for name, build in BUILDERS.items()}


def differs(name: str, value: str, base: dict[str, Any]) -> list[str]:
    """The configurations that ``name=value`` changes (or why the value is refused)."""
    try:
        got = built({name: value})
    except MarketDataError as exc:
        return [f"refused: {exc}"]
    return [b for b in BUILDERS if got[b] != base[b]]


def test_building_twice_gives_equal_configurations() -> None:
    assert built({}) == built({})  # else every comparison below would report a difference


def test_documented_defaults_are_the_code_defaults() -> None:
    base = built({})
    rows = documented_defaults()
    assert len(rows) >= 80
    wrong = {
        f"{doc}: {name} = {value!r}": d
        for name, value, doc in rows
        if (d := differs(name, value, base))
    }
    assert wrong == {}, "the table's default is not the code's (fix the table or the code)"


def test_the_comparison_sees_the_service_settings() -> None:
    """Guards the check itself: a documented number one off its default must change what some
    process builds for most rows (the others are read elsewhere: the Kafka client factories,
    the sources, the start scripts)."""
    base = built({})
    numeric = {n: v for n, v, _ in documented_defaults() if NUMBER.fullmatch(v)}
    seen = {n for n, v in numeric.items() if differs(n, str(float(v) + 1).removesuffix(".0"), base)}
    assert len(seen) >= 40, sorted(numeric.keys() - seen)
    assert {"MD_WS_MAX_FRAME", "MD_REST_MICROCACHE_MS", "MD_STORAGE_BATCH"} <= seen
    assert differs("MD_WS_MAX_FRAME", "12345", base) == ["gateway_ws.config.WsConfig"]
