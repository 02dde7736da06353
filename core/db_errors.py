"""PostgreSQL errors classified by asyncpg's exception *classes* (keyed by SQLSTATE, never by the
localizable message), for every process that talks to the history database: retriable ones
succeed when tried again later, anything else is permanent."""

from __future__ import annotations

import asyncpg

# SQLSTATE classes 08 (connection exception), 57P (operator intervention: admin shutdown, crash
# shutdown, cannot connect now), 53 (insufficient resources) and 40 (transaction rollback:
# serialization failure, deadlock) all succeed when tried again later.
RETRIABLE_PG: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed / pool released under us
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)


def is_retriable_db_error(exc: BaseException) -> bool:
    """True when the same statement may succeed later (database down, restarting, overloaded)."""
    if isinstance(exc, RETRIABLE_PG):
        return True
    # socket-level failures before asyncpg got a connection
    return isinstance(exc, (OSError, ConnectionError, TimeoutError))
