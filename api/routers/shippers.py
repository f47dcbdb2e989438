"""``/v1/shippers``: a shipper's contract: alarm deadlines (SLA), default thresholds and
whom to e-mail about what (``notify``)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from alerts.mail_notify import EMAIL_EVENTS, MAX_RECIPIENTS, SEVERITIES
from api.auth import Admin, AnyKey, Staff
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.params import Ident
from api.render import render_shipper

router = APIRouter(prefix="/v1/shippers", tags=["shippers"], responses=ERROR_RESPONSES)


# The shapes below document the body; the values are checked by the engine's own validators
# (alerts.validate_sla, rules.validate_rules, alerts.mail_notify.validate_notify) in the
# shipper service, the one place that decides what the engine accepts: a 422 from there
# leaves the stored contract unchanged.

Severity = Literal["critical", "major", "minor"]
NotifyEvent = Literal[
    "alarm.raised",
    "alarm.acknowledged",
    "alarm.resolved",
    "alarm.escalated",
    "exception.created",
]
# The schema spells them out; they are the notifier's, in its order.
assert get_args(Severity) == SEVERITIES
assert get_args(NotifyEvent) == EMAIL_EVENTS


class Deadline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ack_min: float | None = Field(None, description="minutes to acknowledge")
    resolve_min: float | None = Field(None, description="minutes to resolve")


class Sla(BaseModel):
    model_config = ConfigDict(extra="forbid")

    critical: Deadline | None = None
    major: Deadline | None = None
    minor: Deadline | None = None


class Notify(BaseModel):
    """One person to e-mail: which severities and which events (left out: all)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254, description="a plain address, e.g. ops@example.com")
    severities: list[Severity] | None = Field(None, min_length=1, max_length=3)
    events: list[NotifyEvent] | None = Field(None, min_length=1, max_length=5)


class ShipperIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sla: Sla = Field(default_factory=Sla)
    rules: dict[str, float] = Field(
        default_factory=dict,
        description='default thresholds, e.g. {"stop_max_min": 45} (names and ranges: '
        "docs/rules.md)",
    )
    notify: list[Notify] = Field(
        default_factory=list,
        max_length=MAX_RECIPIENTS,
        description="e-mail notifications (docs/notifications.md); replaces the stored list",
    )


class NotifyOut(BaseModel):
    email: str
    severities: list[str]
    events: list[str]


class ShipperOut(BaseModel):
    shipper: str
    sla: dict[str, dict[str, float]]
    rules: dict[str, float]
    notify: list[NotifyOut] = Field(default_factory=list)


def _render(doc: dict[str, Any]) -> dict[str, Any]:
    """The contract with its notify list (stored documents from before it have none)."""
    notify = doc.get("notify")
    return {**render_shipper(doc), "notify": notify if isinstance(notify, list) else []}


@router.put("/{shipper}", response_model=ShipperOut)
def put_shipper(shipper: Ident, body: ShipperIn, runtime: RuntimeDep, principal: Admin) -> dict:
    """Set a shipper's deadlines per severity, its default rule thresholds and whom to
    e-mail about its alarms."""
    doc = {
        "shipper": shipper,
        "sla": body.sla.model_dump(exclude_none=True),
        "rules": body.rules,
        "notify": [n.model_dump(exclude_none=True) for n in body.notify],
    }
    return _render(runtime.put_shipper(doc))


@router.get("", response_model=list[ShipperOut])
def list_shippers(runtime: RuntimeDep, principal: Staff) -> list[dict]:
    return [_render(s) for s in runtime.store.list_shippers()]


@router.get("/{shipper}", response_model=ShipperOut)
def get_shipper(shipper: Ident, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """A shipper's contract (a shipper key: its own only)."""
    doc = runtime.store.get_shipper(shipper)
    if doc is None or not principal.sees(shipper):
        raise NotFound("no such shipper", shipper=shipper)
    return _render(doc)
