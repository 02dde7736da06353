"""``GET /orderbook?seq=N`` / ``?at=<time>``: the book as it was, rebuilt from stored history.

The live route (gateway_rest/app.py) hands a request carrying ``seq`` or ``at`` to
:func:`past_orderbook`; the rebuild itself is :func:`core.history.book.book_at`. Outside the
retained history (or before the first stored snapshot) the answer is a 404 ``no_history`` that
says so; a database that cannot be reached is a 503 like every database-backed route.
"""

from __future__ import annotations

import asyncpg
import orjson

from core.history.archive import history_source
from core.history.book import HistoryError, book_at
from gateway_rest.base_error import RestError
from gateway_rest.store import MarketStore, Unavailable

# errors that mean "the database is not there", not "the request is wrong"
_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    asyncpg.exceptions.OperatorInterventionError,
)


class NoHistory(RestError):
    """Maps to 404 ``no_history`` in the app."""


async def past_orderbook(
    store: MarketStore,
    symbol: str,
    *,
    level: int,
    depth: int,
    seq: int | None,
    epoch: int | None,
    at_ns: int | None,
) -> bytes:
    try:
        pool = await store.pool()
        source = history_source(pool, store.settings.get("MD_ARCHIVE_URL", str, ""))
        body = await book_at(
            source, symbol, level=level, depth=depth, seq=seq, epoch=epoch, at_ns=at_ns
        )
    except HistoryError as exc:
        raise NoHistory(str(exc)) from None
    except asyncpg.exceptions.UndefinedTableError as exc:
        raise Unavailable("database", "schema missing: run `python -m storage migrate`") from exc
    except _DOWN as exc:
        raise Unavailable("database", f"{type(exc).__name__}: {exc}") from exc
    return orjson.dumps(body)
