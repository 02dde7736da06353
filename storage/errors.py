"""Storage errors, classified once so retry loops never guess from message text.

    MarketDataError (core.errors)
    └── StorageError
        ├── DatabaseUnavailable   connection refused/lost, server shutting down (retriable)
        └── BadRecord             a Kafka record that cannot be stored (permanent: count, skip)

``is_retriable_db_error`` maps asyncpg's exception *classes* (keyed by SQLSTATE, never by the
localizable message) to retriable or permanent, the asyncpg way.
"""

from __future__ import annotations

import asyncpg

from core.errors import MarketDataError


class StorageError(MarketDataError):
    pass


class DatabaseUnavailable(StorageError):
    retriable = True


class BadRecord(StorageError):
    retriable = False


# SQLSTATE classes 08 (connection exception), 57P (operator intervention: admin shutdown, crash
# shutdown, cannot connect now), 53 (insufficient resources) and 40 (transaction rollback:
# serialization failure, deadlock) all succeed when tried again later.
_RETRIABLE_PG: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed / pool released under us
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)


def is_retriable_db_error(exc: BaseException) -> bool:
    """True when the same statement may succeed later (database down, restarting, overloaded)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, _RETRIABLE_PG):
        return True
    # socket-level failures before asyncpg got a connection
    return isinstance(exc, (OSError, ConnectionError, TimeoutError))
