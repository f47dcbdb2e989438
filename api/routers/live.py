"""``GET /v1/live``: Server-Sent Events of positions, alarms and their transitions.

Tenancy by trip, not by device: the engine hands a device's messages to the device's
current trip, so when a device moves from one shipper's trip to another's, a backlog of
the first trip that arrives late would be shown as the second trip's position. A position
is streamed only when its time lies within its trip's own span (``TripSpans``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from alerts.live import EVENT_TYPES, OVERFLOW
from api.auth import AnyKey
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, ApiError, NotFound
from api.params import BadTime, parse_time
from api.sse import EventStreamResponse, event_stream
from telemetry.store.base import Store
from telemetry.store.spans import Window, trip_span

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["live"], responses=ERROR_RESPONSES)

Event = dict[str, Any]


class TripSpans:
    """Each trip's own span (``telemetry.store.spans.trip_span``), read from the store and
    kept: for ``settled_s`` once the trip has been activated (its start no longer moves),
    for ``unsettled_s`` while it is planned, unknown or the read failed. At most
    ``max_trips`` trips are kept (least recently used forgotten first). One per app."""

    def __init__(
        self,
        store: Store,
        *,
        settled_s: float = 300.0,
        unsettled_s: float = 2.0,
        max_trips: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settled = settled_s
        self._unsettled = unsettled_s
        self._max = max_trips
        self._clock = clock
        self._spans: collections.OrderedDict[str, tuple[float, Window | None]] = (
            collections.OrderedDict()
        )
        self._pending: dict[str, asyncio.Future[Window | None]] = {}

    async def span(self, trip_id: str) -> Window | None:
        """The trip's ``(start, end)`` in epoch ms (``end`` None while it runs); None when
        the trip is not known or cannot be read now."""
        now = self._clock()
        cached = self._spans.get(trip_id)
        if cached is not None and cached[0] > now:
            self._spans.move_to_end(trip_id)
            return cached[1]
        pending = self._pending.get(trip_id)
        if pending is not None:  # another stream is reading this trip now: share its read
            return await asyncio.shield(pending)
        pending = self._pending[trip_id] = asyncio.get_running_loop().create_future()
        span: Window | None = None  # cancelled while reading: the waiters see "unknown"
        try:
            span, settled = await run_in_threadpool(self._read, trip_id)
        finally:
            del self._pending[trip_id]
            pending.set_result(span)
        self._spans[trip_id] = (now + (self._settled if settled else self._unsettled), span)
        self._spans.move_to_end(trip_id)
        while len(self._spans) > self._max:
            self._spans.popitem(last=False)
        return span

    def known(self, trip_id: str) -> tuple[bool, Window | None]:
        """``(True, span)`` when the trip's span is kept and fresh, else ``(False, None)``
        (then ``span`` reads it): lets a burst of positions be decided without awaiting."""
        cached = self._spans.get(trip_id)
        if cached is not None and cached[0] > self._clock():
            return True, cached[1]
        return False, None

    def _read(self, trip_id: str) -> tuple[Window | None, bool]:
        try:
            trip = self._store.get_trip(trip_id)
            if trip is None:
                return None, False
            activated = trip.get("activated_at") is not None
            # the status events are needed only when the document lacks the activation time
            planned = trip.get("status") == "planned"
            events = [] if activated or planned else self._store.trip_events(trip_id)
            return trip_span(trip, events), activated
        except Exception:
            log.warning("live: cannot read the span of trip %s", trip_id, exc_info=True)
            return None, False

    async def owns(self, event: Event) -> bool:
        """Whether a ``position`` event lies within its trip's span (a position of no trip,
        e.g. of an idle device, is not any trip's: it passes)."""
        decided = self.owns_now(event)
        if decided is not None:
            return decided
        data = event["data"]
        return _within(data, await self.span(str(data["trip_id"])))

    def owns_now(self, event: Event) -> bool | None:
        """``owns`` without awaiting; None when the trip's span must be read first."""
        data = event.get("data")
        if not isinstance(data, dict) or data.get("trip_id") is None:
            return True
        hit, span = self.known(str(data["trip_id"]))
        return _within(data, span) if hit else None


def _within(data: dict[str, Any], span: Window | None) -> bool:
    if span is None:
        return False  # unknown trip, or the store is down: show nothing rather than leak
    try:
        ts = parse_time(data.get("ts"), "ts")  # type: ignore[arg-type]
    except (BadTime, TypeError):
        return False
    start, end = span
    return start <= ts and (end is None or ts <= end)


class _OwnPositions:
    """The hub subscription with positions outside their trip's span left out; the rest
    (alarms, transitions, overflow markers) passes unchanged."""

    def __init__(
        self, subscription: Any, spans: TripSpans, wanted: Callable[[Event], bool]
    ) -> None:
        self._sub = subscription
        self._spans = spans
        self._wanted = wanted  # what the stream would send: only those need a span
        self._held: collections.deque[Event] = collections.deque()  # taken, not yet decided

    def __aiter__(self) -> _OwnPositions:
        return self

    async def __anext__(self) -> Event:
        while True:
            event: Event = self._held.popleft() if self._held else await anext(self._sub)
            if event.get("type") != "position" or not self._wanted(event):
                return event  # not a position, or one the stream's ``accept`` drops anyway
            if await self._spans.owns(event):
                return event

    def ready(self) -> list[Event]:
        """What can be sent now without waiting, in order: the subscription's buffer, up to
        the first position whose trip's span must be read (kept for ``__anext__``). The
        stream sends a burst as one write instead of one wake-up per event."""
        self._held.extend(self._sub.drain())
        out: list[Event] = []
        while self._held:
            event = self._held[0]
            if event.get("type") == "position" and self._wanted(event):
                owned = self._spans.owns_now(event)
                if owned is None:
                    break
                self._held.popleft()
                if owned:
                    out.append(event)
                continue
            out.append(self._held.popleft())
        return out

    def close(self) -> None:
        self._sub.close()


def _trip_spans(request: Request, store: Store) -> TripSpans:
    state = request.app.state
    spans = getattr(state, "live_trip_spans", None)
    if spans is None:
        spans = state.live_trip_spans = TripSpans(store)
    return spans


def _types(raw: str | None) -> frozenset[str] | None:
    if not raw:
        return None
    wanted = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = wanted - set(EVENT_TYPES)
    if unknown:
        raise ApiError(
            f"unknown event type(s) {', '.join(sorted(unknown))}; valid: {', '.join(EVENT_TYPES)}",
            status=422,
            code="validation_error",
        )
    return wanted


@router.get(
    "/live",
    response_class=EventStreamResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def live(
    request: Request,
    runtime: RuntimeDep,
    principal: AnyKey,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    types: Annotated[
        str | None, Query(max_length=500, description="only these event types (comma-separated)")
    ] = None,
) -> EventStreamResponse:
    """``event: <type>`` / ``data: <json>`` frames (``position``, ``alarm.raised``,
    ``alarm.acknowledged``, ``alarm.resolved``, ``alarm.escalated``, ``alarm.episode_ended``,
    ``trip.milestone``, ``trip.status``, ``geofence.entered``, ``geofence.exited``,
    ``alarm.assigned``, ``alarm.note``, ``alarm.feedback``, ``exception.*`` (``created``,
    ``acknowledged``, ``resolved``, ``escalated``, ``assigned``, ``note``, ``feedback``);
    ``overflow`` when this reader fell behind) and a
    ``: heartbeat`` comment while idle. A shipper key receives only its own events."""
    wanted = _types(types)
    if principal.asks_foreign(shipper):
        raise NotFound("no such shipper", shipper=shipper)
    scope = principal.shipper_filter(shipper)

    def accept(event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == OVERFLOW:
            return True
        if scope is not None and event.get("shipper") != scope:
            return False  # the hub filters too; this keeps the promise if it ever did not
        return wanted is None or kind in wanted

    settings = request.app.state.live
    subscription = runtime.hub.subscribe(shipper=scope)
    own = _OwnPositions(subscription, _trip_spans(request, runtime.store), accept)
    stream = event_stream(
        own, heartbeat_s=settings.heartbeat_s, stop=settings.stopping, accept=accept
    )
    return EventStreamResponse(stream)
