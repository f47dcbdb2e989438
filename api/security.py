"""Refuse before reading: the API's outermost guard (a pure ASGI middleware).

For every HTTP request, in this order, before any route or body parser runs:

1. bad bytes: a path or query parameter holding a NUL or another control character, or
   bytes that are not UTF-8, is a 400 (such values used to reach the database);
2. under ``/v1/``: a client address that tried ``key_failures_per_min`` unknown keys in the
   last minute gets 429; a request without a known ``Authorization: Bearer`` key gets 401,
   and its body is never read;
3. the body is read, counting, up to ``max_body_bytes`` (``Content-Length`` announcing more,
   or a chunked body growing past it, is a 413 at once): at most the limit is held;
4. the response gets ``X-Content-Type-Options: nosniff``; HTML pages (the desk) get a
   Content-Security-Policy allowing only the page's own scripts and styles (style
   attributes, which the desk's timeline sets, excepted), images from itself, ``data:``
   and the configured tile host, and no framing.

No CORS headers are sent: browsers refuse cross-origin reads of the API (the desk is served
by the API itself, same origin).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import ApiLimits, FailureLimiter, json_text_problem

# C0 controls but tab, LF and CR, and DEL: never meaningful in an id, a time or a filter.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNKNOWN = object()  # the key lookup failed (store down): the route will answer for itself


def _has_bad_bytes(scope: Scope) -> bool:
    if _BAD_CHARS.search(scope.get("path", "")):
        return True
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return False
    try:
        text = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return bool(_BAD_CHARS.search(text))


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            return None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


def _is_api_route(scope: Scope) -> bool:
    """A path of one of the ``/v1`` routes (any method): these need a key. Other paths under
    ``/v1`` stay a plain 404."""
    path: str = scope.get("path", "")
    if not path.startswith("/v1/"):
        return False
    for route in scope["app"].router.routes:
        if isinstance(route, Mount):
            continue  # the desk's static files, mounted at /
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return True
    return False


def tile_source(template: str | None) -> str | None:
    """The CSP source of a tile URL template: ``https://{s}.tile.osm.org/...`` ->
    ``https://*.tile.osm.org``."""
    if not template:
        return None
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    host = parts.netloc.replace("{s}", "*")
    if "{" in host or "}" in host or " " in host or ";" in host:
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{host}"


def desk_csp(tiles: str | None) -> str:
    """The Content-Security-Policy of the desk page."""
    images = " ".join(s for s in ("'self'", "data:", tile_source(tiles)) if s)
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",  # browsers without the two below
            "style-src-elem 'self'",
            "style-src-attr 'unsafe-inline'",
            f"img-src {images}",
            "connect-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    close: bool = True,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    if close:
        raw.append((b"connection", b"close"))  # the unread rest of the body is not wanted
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """See the module docstring. ``limits`` are the operator's values."""

    def __init__(self, app: ASGIApp, limits: ApiLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ApiLimits()
        self.failures = FailureLimiter(
            self.limits.key_failures_per_min, max_clients=self.limits.tracked_clients
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        if _has_bad_bytes(scope):
            await _answer(send, 400, "bad_request", "control characters or non-UTF-8 in the URL")
            return
        if _is_api_route(scope) and not await self._authorised(scope, send):
            return
        length = _content_length(scope)
        limit = self.limits.max_body_bytes
        if length is not None and (length < 0 or length > limit):
            await _too_large(send, limit)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)  # the client left: let the app see it
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        # A NUL or a lone surrogate in JSON text: PostgreSQL cannot store it; say so up front.
        problem = json_text_problem(body) if body else None
        if problem:
            await _answer(send, 400, "bad_request", problem)
            return
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        replay += [m for m in messages if m["type"] != "http.request"]

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)

    async def _authorised(self, scope: Scope, send: Send) -> bool:
        client = (scope.get("client") or ("?",))[0] or "?"
        wait = self.failures.retry_after_s(client)
        if wait:
            await _answer(
                send,
                429,
                "too_many_requests",
                "too many unknown API keys from this address; retry later",
                {"Retry-After": str(wait)},
            )
            return False
        secret = _bearer(scope)
        if secret is None:
            await _answer(
                send,
                401,
                "unauthorized",
                "missing API key: send Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )
            return False
        runtime = scope["app"].state.runtime
        found: Any
        try:
            found = await run_in_threadpool(runtime.lookup_api_key, secret)
        except Exception:  # the store is down: the route's own lookup answers for it
            found = _UNKNOWN
        if found is None:
            self.failures.failed(client)
            await _answer(
                send, 401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"}
            )
            return False
        return True

    def _with_headers(self, scope: Scope, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                is_docs = scope.get("path", "").startswith("/docs")
                if ctype.startswith(b"text/html") and not is_docs:
                    tiles = getattr(scope["app"].state.runtime, "tiles", None)
                    headers += [
                        (b"content-security-policy", desk_csp(tiles).encode()),
                        (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"no-referrer"),
                    ]
                message = {**message, "headers": headers}
            await send(message)

        return sending


async def _too_large(send: Send, limit: int) -> None:
    await _answer(send, 413, "too_large", f"the request body is over {limit} bytes")
