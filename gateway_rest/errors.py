"""The REST API's errors and parameter parsers: one JSON shape for every error
(``{"error", "message", "parameter"}``, docs/rest.md "Errors") and the handlers that map
exceptions to it, so bad input is a 404/422 naming the parameter and never a 500."""

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.codec import ns_from_iso
from core.errors import CodecError
from gateway_rest.base_error import RestError
from gateway_rest.store import NotCached, Unavailable

log = logging.getLogger("gateway_rest.app")
JSON = "application/json"


def _decimal_digits(v: Any) -> Any:
    # pydantic's lax int takes " 200" and "+200" (schemathesis sent ?epoch=+200, which a URL
    # decodes to " 200"): an integer query parameter is plain ASCII digits or a 422
    if isinstance(v, str) and not (v.isascii() and v.isdigit()):
        raise ValueError("expected a non-negative decimal integer")
    return v


#: add to every integer query parameter: ``Annotated[int, Query(...), DIGITS]``
DIGITS = BeforeValidator(_decimal_digits)


class ApiError(RestError):
    """An answer other than 200: its status, the stable ``error`` code and the message."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.parameter = parameter
        self.headers = headers
        super().__init__(message)


def error_response(
    status: int,
    error: str,
    message: str,
    parameter: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": error, "message": message, "parameter": parameter}
    if details:
        body["details"] = details
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


# 9999-12-31: beyond it neither Python's datetime nor PostgreSQL's timestamptz can follow
MAX_NS = 253_402_300_799 * 1_000_000_000


def parse_time(raw: str | None, name: str) -> int | None:
    """ISO-8601 (``2026-11-24T06:00:00Z``) or Unix time in seconds or milliseconds -> ns."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    try:
        if text.lstrip("-").isdigit():
            v = int(text)
            if v < 0:
                raise ValueError
            ns = v * 1_000_000 if v > 10**11 else v * 1_000_000_000
        else:
            ns = ns_from_iso(text)
        if not 0 <= ns < MAX_NS:
            raise ValueError
        return ns
    except (ValueError, CodecError, OverflowError):
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name}: expected ISO-8601 time or Unix seconds/milliseconds, got {raw!r}",
            name,
        ) from None


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    s, e = parse_time(start, "start"), parse_time(end, "end")
    if s is not None and e is not None and s >= e:
        raise ApiError(422, "invalid_parameter", "start: must be before end", "start")
    return s, e


def parse_cursor(raw: str | None) -> tuple[int, str] | None:
    if not raw:
        return None
    ns, sep, tid = raw.partition(":")
    # isascii: str.isdigit() also accepts digits int() refuses ("²"), which were a 500
    if (
        not sep
        or not (ns.isascii() and ns.isdigit())
        or not tid
        or int(ns) >= MAX_NS
        or "\x00" in tid
    ):
        raise ApiError(
            422, "invalid_parameter", "cursor: not a cursor returned by this API", "cursor"
        )
    return int(ns), tid


def install_error_handlers(app: FastAPI) -> None:
    """Every exception a route may raise, answered in the API's one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.error, exc.message, exc.parameter, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ())]
        param = loc[-1] if loc else None
        details = [
            {"parameter": str(e.get("loc", ("",))[-1]), "message": e.get("msg", "")} for e in errs
        ]
        return error_response(
            422, "invalid_parameter", f"{param}: {first.get('msg', 'invalid')}", param, details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # keeps the router's headers: a 405 must say `Allow` (RFC 9110)
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> Response:
        return error_response(
            503,
            "unavailable",
            f"{exc.dependency} unavailable: {exc.reason}",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        # a bug, never bad input (that is 404/422 above): log it whole, answer JSON
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error (logged)")

    @app.exception_handler(NotCached)
    async def _not_cached(_: Request, exc: NotCached) -> Response:
        return error_response(404, "no_data", str(exc))
