"""One root exception for the platform.

    MarketDataError
    ├── ConfigError        a setting is missing or malformed (permanent: fix the environment)
    ├── SymbolError        a symbol cannot be parsed or is not listed (permanent: client input)
    └── CodecError         bytes that are not a valid message (permanent: drop and count)

``retriable`` tells a caller whether trying again can help, so loops never guess from text.
"""

from __future__ import annotations


class MarketDataError(Exception):
    retriable: bool = False


class ConfigError(MarketDataError):
    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class SymbolError(MarketDataError):
    def __init__(self, symbol: object, reason: str = "unknown symbol") -> None:
        self.symbol = symbol
        self.reason = reason
        super().__init__(f"{reason}: {symbol!r}")


class CodecError(MarketDataError):
    pass
