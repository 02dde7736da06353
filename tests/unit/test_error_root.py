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


SERVICES = ("aggregator", "gateway_ws", "gateway_rest", "fix_gateway", "storage")
# Today's second roots, to burn down (issue 14: "one root exception per service"): a line leaves
# when its class derives from its service's root; the test then says so.
KNOWN_EXTRA_ROOTS: set[str] = set()


def _roots(found: dict[str, type[BaseException]]) -> dict[str, set[str]]:
    """Per service: its exceptions that derive from no exception of the same service."""
    out: dict[str, set[str]] = {s: set() for s in SERVICES}
    for name, cls in found.items():
        pkg = name.split(".")[0]
        if pkg in out and not any(b.__module__.split(".")[0] == pkg for b in cls.__mro__[1:]):
            out[pkg].add(name)
    return out


def test_one_root_exception_per_service() -> None:
    roots = _roots(_exceptions())
    extra = {
        pkg: sorted(r - KNOWN_EXTRA_ROOTS)
        for pkg, r in roots.items()
        if len(r - KNOWN_EXTRA_ROOTS) > 1
    }
    assert extra == {}, "derive from the service's root exception"
    stale = KNOWN_EXTRA_ROOTS - set().union(*roots.values())
    assert stale == set(), "under the service's root now: remove from KNOWN_EXTRA_ROOTS"
    assert roots["fix_gateway"] == {"fix_gateway.errors.FixError"}
    assert roots["storage"] == {"storage.errors.StorageError"}


def test_the_root_finder_sees_a_second_root() -> None:
    class Root(MarketDataError):
        pass

    class Child(Root):
        pass

    class Other(MarketDataError):
        pass

    for c in (Root, Child, Other):
        c.__module__ = "storage.x"
    found: dict[str, type[BaseException]] = {
        "storage.x.Root": Root,
        "storage.x.Child": Child,
        "storage.x.Other": Other,
    }
    assert _roots(found)["storage"] == {"storage.x.Root", "storage.x.Other"}
