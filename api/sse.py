"""Server-Sent Events framing for the live feed.

Each event is ``event: <type>\\ndata: <json>\\n\\n``; while nothing happens a
``: heartbeat`` comment goes out every ``heartbeat_s`` so proxies keep the connection and
clients notice a dead one. The stream ends when the subscription closes (the hub closes at
shutdown), when ``stop`` is set, or when the client goes away (Starlette cancels us).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

Event = dict[str, Any]
RETRY_MS = 3000


def format_event(event_type: str, data: Any) -> bytes:
    """One SSE frame; the JSON is single-line, so one ``data:`` field carries it."""
    payload = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    return b"event: " + event_type.encode() + b"\ndata: " + payload + b"\n\n"


HEARTBEAT = b": heartbeat\n\n"


async def event_stream(
    subscription: Any,
    *,
    heartbeat_s: float,
    stop: asyncio.Event,
    accept: Callable[[Event], bool],
) -> AsyncIterator[bytes]:
    """Frames of ``subscription`` (an async iterator of hub events, closable) until it ends.

    ``accept`` filters events (tenancy, requested types) before they are framed."""
    stopping = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[Event] | None = None
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while not stop.is_set():
            # The hub's subscription is a plain async iterator (not a generator), so a
            # cancelled wait loses nothing; racing ``stop`` ends the stream at shutdown.
            if nxt is None:
                nxt = asyncio.ensure_future(anext(subscription))
            done, _ = await asyncio.wait(
                {nxt, stopping}, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
            )
            if nxt not in done:
                if stopping in done:
                    return
                yield HEARTBEAT
                continue
            finished, nxt = nxt, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            # a burst goes out as one write: one wake-up per burst, not per event
            ready = getattr(subscription, "ready", None)
            burst = [event, *ready()] if callable(ready) else [event]
            frames = [
                format_event(str(e.get("type", "message")), e.get("data"))
                for e in burst
                if accept(e)
            ]
            if frames:
                yield b"".join(frames)
    finally:
        for task in (nxt, stopping):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await task
        close = getattr(subscription, "close", None)
        if callable(close):
            close()


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that always closes its stream (and so its hub
    subscription) when the response ends, however it ends: Starlette leaves an async
    generator suspended when the server's ``send`` fails after a disconnect."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes], status_code: int = 200) -> None:
        super().__init__(
            frames,
            status_code=status_code,
            media_type=self.media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                await aclose()
