"""``GET /v1/live``: Server-Sent Events of positions, alarms and their transitions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from alerts.live import EVENT_TYPES, OVERFLOW
from api.auth import AnyKey
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, ApiError, NotFound
from api.sse import EventStreamResponse, event_stream

router = APIRouter(prefix="/v1", tags=["live"], responses=ERROR_RESPONSES)


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
    ``trip.milestone``, ``trip.status``; ``overflow`` when this reader fell behind) and a
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
    stream = event_stream(
        subscription, heartbeat_s=settings.heartbeat_s, stop=settings.stopping, accept=accept
    )
    return EventStreamResponse(stream)
