"""The WebSocket gateway's root exception (one root per service, tests/unit/test_error_root.py):
the live gateway's protocol errors and the replay server's derive from it."""

from core.errors import MarketDataError


class GatewayWsError(MarketDataError):
    """An error of the WebSocket gateway or its replay server."""
