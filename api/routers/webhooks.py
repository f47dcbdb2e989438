"""``/v1/webhooks``: a shipper's signed-event subscriptions and their delivery state."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Query, Response
from fastapi import status as http_status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from alerts import WEBHOOK_EVENTS
from alerts.targets import RefusedTarget
from api.auth import AdminOrTenant
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, ApiError, Forbidden, NotFound
from api.params import AnyId, Limit
from api.render import render_delivery, render_webhook

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)

WebhookEvent = Literal[
    "alarm.raised",
    "alarm.acknowledged",
    "alarm.resolved",
    "alarm.escalated",
    "trip.milestone",
    "geofence.entered",
    "geofence.exited",
    "exception.created",
]
# The API spells the events out for its schema; they are the alert service's, in its order.
assert get_args(WebhookEvent) == tuple(WEBHOOK_EVENTS)
_ALL_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)


class WebhookIn(BaseModel):
    """A subscription; ``shipper`` only for an admin key (a shipper key's is its own)."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    secret: str = Field(min_length=16, max_length=256, description="HMAC-SHA256 key")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(_ALL_EVENTS), min_length=1, max_length=16
    )
    shipper: str | None = Field(None, min_length=1, max_length=128)


class WebhookOut(BaseModel):
    webhook_id: str
    shipper: str | None
    url: str | None
    events: list[str]
    secret_hint: str = Field(description="the secret's last characters, never all of it")
    active: bool = True
    created_at: str | None


class DeliveryOut(BaseModel):
    delivery_id: str | None
    webhook_id: str | None
    event_id: str | None
    event_type: str | None
    shipper: str | None
    status: str | None
    attempts: int
    created_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    last_error: str | None


@router.post("", status_code=http_status.HTTP_201_CREATED, response_model=WebhookOut)
def create_webhook(body: WebhookIn, runtime: RuntimeDep, principal: AdminOrTenant) -> dict:
    """Subscribe a URL to events of one shipper's trips."""
    if principal.is_shipper:
        if body.shipper is not None and body.shipper != principal.shipper:
            raise Forbidden("a shipper key subscribes to its own events only")
        shipper = principal.shipper
    else:
        if body.shipper is None:
            raise ApiError("an admin key must name the shipper", status=422)
        shipper = body.shipper
    url = str(body.url)
    try:
        runtime.targets.check_url(url)
    except RefusedTarget as exc:
        raise ApiError(exc.message, status=422, code="validation_error") from None
    hook = {
        "webhook_id": "wh_" + secrets.token_hex(8),
        "shipper": shipper,
        "url": url,
        "secret": body.secret,
        "events": list(dict.fromkeys(body.events)),
        "active": True,
        "created_at": runtime.clock.now_ms(),
        "created_by": principal.key_id,
    }
    runtime.store.put_webhook(hook)
    return render_webhook(hook)


@router.get("", response_model=list[WebhookOut])
def list_webhooks(
    runtime: RuntimeDep,
    principal: AdminOrTenant,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
) -> list[dict]:
    """Subscriptions (a shipper key: its own); secrets are never returned."""
    if principal.asks_foreign(shipper):
        return []
    hooks = runtime.store.list_webhooks(principal.shipper_filter(shipper))
    return [render_webhook(h) for h in hooks if principal.sees(h.get("shipper"))]


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    runtime: RuntimeDep,
    principal: AdminOrTenant,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: Limit = 100,
) -> list[dict]:
    """Webhook deliveries, newest first: pending (with the next attempt), delivered, dead."""
    if principal.asks_foreign(shipper):
        return []
    rows = runtime.store.list_deliveries(
        shipper=principal.shipper_filter(shipper), status=status, limit=limit
    )
    return [render_delivery(d) for d in rows if principal.sees(d.get("shipper"))]


@router.delete(
    "/{webhook_id}",
    status_code=http_status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
def delete_webhook(webhook_id: AnyId, runtime: RuntimeDep, principal: AdminOrTenant) -> Response:
    """Remove a subscription (404 for another shipper's)."""
    hooks = runtime.store.list_webhooks(principal.shipper if principal.is_shipper else None)
    if not any(
        h.get("webhook_id") == webhook_id and principal.sees(h.get("shipper")) for h in hooks
    ):
        raise NotFound("no such webhook", webhook_id=webhook_id)
    if not runtime.store.delete_webhook(webhook_id):
        raise NotFound("no such webhook", webhook_id=webhook_id)
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)
