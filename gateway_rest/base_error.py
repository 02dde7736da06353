"""The REST gateway's root exception (one root per service, tests/unit/test_error_root.py). It
lives alone so that ``store`` and ``history``, which ``errors`` imports, can derive from it too."""

from core.errors import MarketDataError


class RestError(MarketDataError):
    """An error of the REST gateway: an API answer other than 200, or a read it could not do."""
