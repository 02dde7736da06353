"""Every public exception of the platform derives from ``core.errors.MarketDataError``, so a
caller can tell ours from a library's and ``retriable`` is always there to read."""

from __future__ import annotations

import importlib
import pkgutil

from core.errors import MarketDataError

PACKAGES = ("core", "aggregator", "gateway_ws", "gateway_rest", "fix_gateway", "storage")
KNOWN_OUTSIDE: set[str] = set()  # every public exception derives from the root


def _exceptions() -> dict[str, type[BaseException]]:
    out: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            if info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for attr, obj in vars(mod).items():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == info.name
                    and not attr.startswith("_")  # private control-flow signals
                ):
                    out[f"{info.name}.{attr}"] = obj
    return out


def test_public_exceptions_derive_from_the_root() -> None:
    found = _exceptions()
    assert "core.errors.ConfigError" in found and "storage.errors.BadRecord" in found
    outside = {n for n, cls in found.items() if not issubclass(cls, MarketDataError)}
    assert outside - KNOWN_OUTSIDE == set(), "derive from core.errors.MarketDataError"
    assert KNOWN_OUTSIDE - outside == set(), "now under the root: remove from KNOWN_OUTSIDE"
