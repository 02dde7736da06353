"""Storage errors, classified once so retry loops never guess from message text.

    MarketDataError (core.errors)
    └── StorageError
        ├── DatabaseUnavailable   connection refused/lost, server shutting down (retriable)
        └── BadRecord             a Kafka record that cannot be stored (permanent: count, skip)

``is_retriable_db_error`` maps asyncpg's exception *classes* (keyed by SQLSTATE, never by the
localizable message) to retriable or permanent, the asyncpg way (core/db_errors.py).
"""

from __future__ import annotations

from core.db_errors import is_retriable_db_error as core_is_retriable
from core.errors import MarketDataError


class StorageError(MarketDataError):
    pass


class DatabaseUnavailable(StorageError):
    retriable = True


class BadRecord(StorageError):
    retriable = False


def is_retriable_db_error(exc: BaseException) -> bool:
    """True when the same statement may succeed later (core/db_errors.py, plus our own
    :class:`DatabaseUnavailable`)."""
    return isinstance(exc, DatabaseUnavailable) or core_is_retriable(exc)
