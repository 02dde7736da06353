"""Canonical symbols are ``BASE-QUOTE`` in upper case; every interface accepts ``BTC/USD``,
``btc-usd`` or ``BTC_USD`` and answers with the canonical form (ARCHITECTURE "Contracts")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from core.errors import SymbolError

_SPLIT = re.compile(r"[-/_:]")
_PART = re.compile(r"^[A-Z0-9]{1,16}$")


def normalize_symbol(raw: object) -> str:
    if not isinstance(raw, str):
        raise SymbolError(raw, "symbol must be a string")
    parts = _SPLIT.split(raw.strip().upper())
    if len(parts) != 2 or not all(_PART.match(p) for p in parts):
        raise SymbolError(raw, "malformed symbol, expected BASE-QUOTE")
    return f"{parts[0]}-{parts[1]}"


ALL_CHANNELS = ("ticker", "l2", "l3", "trades", "candles", "stats")


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One line of the symbol catalogue (what REST /symbols and FIX SecurityList serve)."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    min_size: Decimal
    status: str = "online"  # online | halted | maintenance
    source: str = "simulator"
    channels: tuple[str, ...] = ALL_CHANNELS

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "base": self.base,
            "quote": self.quote,
            "tick_size": str(self.tick_size),
            "min_size": str(self.min_size),
            "status": self.status,
            "source": self.source,
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> SymbolInfo:
        return cls(
            symbol=str(d["symbol"]),
            base=str(d["base"]),
            quote=str(d["quote"]),
            tick_size=Decimal(str(d["tick_size"])),
            min_size=Decimal(str(d["min_size"])),
            status=str(d.get("status", "online")),
            source=str(d.get("source", "simulator")),
            channels=tuple(d.get("channels") or ALL_CHANNELS),  # type: ignore[arg-type]
        )


def default_info(symbol: str, source: str = "simulator") -> SymbolInfo:
    base, quote = symbol.split("-")
    return SymbolInfo(symbol, base, quote, Decimal("0.01"), Decimal("0.0001"), source=source)
