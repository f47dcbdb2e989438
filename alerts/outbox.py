"""Webhook events into the store's outbox (contract §6), one row per matching subscription,
and one row of kind ``email`` per address of the shipper's ``notify`` list that wants the
event (contract §5; ``alerts.mail_notify``), in the same write.

The envelope ``{"id", "type", "created_at", "shipper", "data"}`` is serialised once: every
receiver, and every retry, gets exactly the same bytes, which is what the signature covers
and what lets receivers de-duplicate by ``id``. Only subscriptions of the event's own shipper
are considered, so a shipper never receives another shipper's events.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from alerts.mail_notify import EMAIL_EVENTS, receiver_key, recipients
from alerts.mail_notify import KIND as EMAIL_KIND
from alerts.render import iso
from core.clock import Clock
from telemetry.store.base import Doc, Store

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS = (
    "alarm.raised",
    "alarm.acknowledged",
    "alarm.resolved",
    "alarm.escalated",
    "trip.milestone",
    "geofence.entered",
    "geofence.exited",
    "exception.created",
)

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """JSON bytes as sent to receivers (numpy scalars allowed, anything odd as a string)."""
    return orjson.dumps(value, option=_JSON_OPTS, default=str)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (rule details may carry numpy scalars or NaN)."""
    return orjson.loads(dumps(value))


def stable_event_id(*parts: object) -> str:
    """An event id derived from what the event is about, so re-emitting it (after a restart,
    a re-delivered engine event) produces the same id and receivers drop the copy."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return "evt_" + hashlib.sha256(key).hexdigest()[:24]


def subscribed(hooks: Sequence[Doc], shipper: str, event_type: str) -> list[Doc]:
    """The subscriptions of ``shipper`` that want ``event_type`` (a hook without an
    ``events`` list wants them all; a hook with ``"active": false`` none)."""
    out = []
    for hook in hooks:
        if hook.get("shipper") != shipper or hook.get("active", True) is False:
            continue
        events = hook.get("events")
        if events is None or event_type in events:
            out.append(hook)
    return out


def enqueue_event(
    store: Store,
    clock: Clock,
    *,
    shipper: str,
    type: str,
    data: dict[str, Any],
    order_key: str,
    event_id: str | None = None,
    hooks: Sequence[Doc] | None = None,
    notify: Sequence[Doc] | None = None,
) -> str:
    """Store one outbox delivery per subscription of ``shipper`` to ``type`` and one per
    address of its ``notify`` list that wants it; return the event id.

    ``order_key`` groups events that must arrive in order (one alarm, one trip).
    ``event_id`` makes the id deterministic (default: random); ``hooks`` is the shipper's
    subscription list and ``notify`` its notify list when the caller already has them
    (saves a query per event in a batch).
    """
    now = clock.now_ms()
    event_id = event_id or "evt_" + uuid.uuid4().hex
    if hooks is None:
        hooks = store.list_webhooks(shipper)
    targets = subscribed(hooks, shipper, type)
    addresses = recipients(
        _notify_list(store, shipper, type) if notify is None else list(notify),
        type,
        data.get("severity"),
    )
    if not targets and not addresses:
        return event_id
    envelope = {
        "id": event_id,
        "type": type,
        "created_at": iso(now),
        "shipper": shipper,
        "data": data,
    }
    body = dumps(envelope).decode()
    common = {
        "event_id": event_id,
        "event_type": type,
        "shipper": shipper,
        "order_key": order_key,
        "body": body,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "last_error": None,
    }
    rows: list[Doc] = [
        {
            "delivery_id": delivery_id_for(event_id, hook["webhook_id"]),
            "webhook_id": hook["webhook_id"],
            **common,
        }
        for hook in targets
    ]
    subject = data.get("alarm_id") or data.get("exception_id")
    for address in addresses:
        key = receiver_key(address)
        rows.append(
            {
                "delivery_id": delivery_id_for(event_id, key),
                "webhook_id": key,
                "kind": EMAIL_KIND,
                "to": address,
                "alarm_id": subject,
                **common,
            }
        )
    store.enqueue_deliveries(rows)
    logger.debug(
        "enqueued %s %s for %d webhook(s), %d address(es)",
        type,
        event_id,
        len(targets),
        len(addresses),
    )
    return event_id


def _notify_list(store: Store, shipper: str, event_type: str) -> Any:
    """The shipper's stored ``notify`` list, read only for event types that are e-mailed."""
    if event_type not in EMAIL_EVENTS:
        return None
    doc = store.get_shipper(shipper)
    return None if doc is None else doc.get("notify")


def delivery_id_for(event_id: str, webhook_id: str) -> str:
    """One delivery per (event, subscription or address): deterministic, so enqueueing the
    same event again adds nothing (the store skips a known id) and no mail goes out twice."""
    return "dlv_" + hashlib.sha256(f"{event_id}\x1f{webhook_id}".encode()).hexdigest()[:24]
