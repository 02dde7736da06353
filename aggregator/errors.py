"""The aggregator's root exception: every error the aggregator raises derives from it (one root
per service, tests/unit/test_error_root.py), so a caller can tell the aggregator's failures from
a bug and from another service's."""

from core.errors import MarketDataError


class AggregatorError(MarketDataError):
    """An error of the aggregator or of one of its sources."""
