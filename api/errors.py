"""Every error leaves the API as JSON ``{"error": {"code", "message"}}``, never a stack trace.

ApiError                 (root of this package, a CargowatchError; carries status and code)
 ├── Unauthorized        401: no key, or a key that is not known
 ├── Forbidden           403: the key's role may not do this
 └── NotFound            404: no such object, or one of another tenant

The engine's errors are mapped by their kind (``core.errors``) alone, never by package:
InvalidInput 422, NotFound 404, Conflict 409, Unavailable 503. FastAPI's own validation
errors become 422 (400 when the body is not JSON at all), unknown routes 404. Anything else
(a CargowatchError of no kind, or any other exception: a bug) is a 500 whose body says only
"internal error" plus an ``error_id`` that is also in the log record with the trace.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import errors as kinds
from core.errors import CargowatchError

log = logging.getLogger(__name__)

#: Status and code of each kind of engine error; an error has at most one kind.
KIND_STATUS: tuple[tuple[type[CargowatchError], int, str], ...] = (
    (kinds.InvalidInput, 422, "validation_error"),
    (kinds.NotFound, 404, "not_found"),
    (kinds.Conflict, 409, "conflict"),
    (kinds.Unavailable, 503, "unavailable"),
)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal",
    503: "unavailable",
}


class ApiError(CargowatchError):
    """An error the API answers with ``status`` and a JSON body."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, **context: Any
    ) -> None:
        super().__init__(message, **context)
        if status is not None:
            self.status = status
            self.code = code or HTTP_CODES.get(status, "error")
        elif code is not None:
            self.code = code


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError, kinds.NotFound):
    status = 404
    code = "not_found"


class ErrorBody(BaseModel):
    code: str
    message: str
    error_id: str | None = Field(
        default=None, description="Only on a 500: the id of the server's log record"
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one shape of an error response."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


#: Documented on every route (OpenAPI): the error statuses an API client must expect.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad bytes in the request (NUL, invalid UTF-8)"},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key"},
    403: {"model": ErrorResponse, "description": "The key's role may not do this"},
    404: {"model": ErrorResponse, "description": "No such object (or another tenant's)"},
    413: {"model": ErrorResponse, "description": "The body is larger than the limit"},
    422: {"model": ErrorResponse, "description": "Invalid parameters or body"},
    429: {"model": ErrorResponse, "description": "Too many failed key attempts from this client"},
}


def _unauthorized(message: str) -> JSONResponse:
    return error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status == 401:
        return _unauthorized(exc.message)
    return error_response(exc.status, exc.code, exc.message)


def internal_error(exc: BaseException, method: str, path: str) -> JSONResponse:
    """A 500 for a bug: the trace goes to the log under a fresh id, the client gets the id."""
    error_id = secrets.token_hex(8)
    log.error("internal error %s on %s %s: %r", error_id, method, path, exc, exc_info=exc)
    return JSONResponse(
        {"error": {"code": "internal", "message": "internal error", "error_id": error_id}},
        status_code=500,
    )


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CargowatchError)
    for kind, status, code in KIND_STATUS:
        if isinstance(exc, kind):
            if status >= 500:
                # the message may name hosts and ports: log it, answer in general terms
                log.warning("%s %s: %s", request.method, request.url.path, exc)
                return error_response(status, code, "a service is unavailable; retry later")
            return error_response(status, code, exc.message)
    return internal_error(exc, request.method, request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    # FastAPI parses the body before it runs the auth dependency: answer 401 first anyway.
    if request.url.path.startswith("/v1/"):
        from api.auth import principal_from_request

        if await run_in_threadpool(principal_from_request, request) is None:
            return _unauthorized("missing or unknown API key")
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "bad_request", "the request body is not valid JSON")
    return error_response(422, "validation_error", _describe(errors))


class CatchAllMiddleware:
    """Outermost guard: an unexpected exception becomes a JSON 500 and a log line.

    Starlette's own 500 handler re-raises after responding (the server then prints the
    trace); this middleware sits inside it and swallows, so nothing but JSON leaves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.debug("client left during %s %s", scope.get("method"), scope.get("path"))
        except Exception as exc:
            response = internal_error(exc, str(scope.get("method")), str(scope.get("path")))
            if not started:
                await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the JSON shape above."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(CargowatchError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(CatchAllMiddleware)
