"""``/v1/alarms``: the alarm queue, one alarm with its history and its trip's carrier, and
the desk's handling: acknowledge, resolve, assign, the call log (notes) and the shipper's
feedback. Exceptions (``/v1/exceptions``) are handled by the same functions.

Who acts is the API key's name (``Principal.actor``); a ``by`` in a body is accepted for old
clients and ignored (contract v2 §5). Every history entry carries ``by`` and ``key_id``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from alerts import AlarmStatus, Cause, Contact, Verdict
from api.auth import AdminOrTenant, AnyKey, Desk, Principal
from api.deps import RuntimeDep, RuntimeLike
from api.errors import ERROR_RESPONSES, ApiError, ErrorResponse, NotFound
from api.params import TIME_HELP, AnyId, Limit, optional_time
from api.render import CSV_OPENAPI, csv_response, render_alarm, wants_csv
from rules import AlarmType

router = APIRouter(prefix="/v1/alarms", tags=["alarms"], responses=ERROR_RESPONSES)

CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "Not allowed in the alarm's current status"}
}
_BY = Field(None, max_length=128, description="ignored: who acts is the API key's name")


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = _BY
    note: str | None = Field(None, max_length=4000)


class ResolveIn(BaseModel):
    """The handling record returned to the shipper."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = _BY
    cause: Cause
    action: str | None = Field(None, max_length=4000)
    feedback: str | None = Field(None, max_length=4000)


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(
        max_length=64, description="the name of a desk or admin key; null: nobody"
    )


class NoteIn(BaseModel):
    """One entry of the call log."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=4000, description="what was said")
    contact: Contact | None = Field(None, description="whom the desk spoke to")
    outcome: str | None = Field(None, max_length=4000)


class FeedbackIn(BaseModel):
    """The shipper's word on the handling of a resolved alarm."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    comment: str | None = Field(None, max_length=4000)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    at: str | None
    by: str | None
    key_id: str | None = None
    action: str
    note: str | None = None


class CarrierView(BaseModel):
    carrier_id: str
    name: str | None
    contacts: list[dict[str, Any]]


class AlarmOut(BaseModel):
    """An alarm (or exception) with its deadlines, escalation and history."""

    model_config = ConfigDict(extra="allow")

    alarm_id: str
    kind: str = "alarm"
    type: str
    severity: str
    trip_id: str | None
    device_id: str | None
    shipper: str | None
    ts: str | None
    raised_at: str | None
    lat: float | None = None
    lon: float | None = None
    details: dict[str, Any]
    status: str
    ack_due: str | None
    resolve_due: str | None
    escalation_level: int
    assigned_to: str | None = None
    resolution: dict[str, Any] | None = None
    feedback: dict[str, Any] | None = None
    carrier: CarrierView | None = None
    history: list[HistoryEntry]


#: The columns of ``GET /v1/alarms`` as CSV, one row per alarm.
CSV_COLUMNS = (
    "alarm_id",
    "kind",
    "type",
    "severity",
    "status",
    "trip_id",
    "device_id",
    "shipper",
    "ts",
    "raised_at",
    "ack_due",
    "resolve_due",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_at",
    "resolved_by",
    "escalation_level",
    "assigned_to",
    "lat",
    "lon",
    "cause",
    "action",
    "resolution_feedback",
    "feedback_verdict",
    "feedback_comment",
    "details",
)


def csv_row(view: dict[str, Any]) -> dict[str, Any]:
    """An alarm view flattened into ``CSV_COLUMNS``."""
    resolution = view.get("resolution") or {}
    feedback = view.get("feedback") or {}
    return {
        **view,
        "cause": resolution.get("cause"),
        "action": resolution.get("action"),
        "resolution_feedback": resolution.get("feedback"),
        "feedback_verdict": feedback.get("verdict"),
        "feedback_comment": feedback.get("comment"),
    }


def visible_alarm(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, kind: str | None = None
) -> dict[str, Any]:
    """The stored alarm, or 404 (another tenant's, or not of ``kind`` when given)."""
    doc = runtime.store.get_alarm(alarm_id)
    if doc is None or not principal.sees(doc.get("shipper")):
        raise NotFound(f"no such {kind or 'alarm'}", alarm_id=alarm_id)
    if kind is not None and (doc.get("kind") or "alarm") != kind:
        raise NotFound(f"no such {kind}", alarm_id=alarm_id)
    return doc


def trip_carrier(runtime: RuntimeLike, trip_id: str | None) -> dict[str, Any] | None:
    """The carrier the alarm's trip names (an id not registered yet: no name, no
    contacts); None when the trip names none."""
    trip = runtime.store.get_trip(trip_id) if trip_id else None
    carrier_id = (trip or {}).get("carrier")
    if not isinstance(carrier_id, str):
        return None
    doc = runtime.store.get_carrier(carrier_id) or {}
    return {
        "carrier_id": carrier_id,
        "name": doc.get("name"),
        "contacts": doc.get("contacts") or [],
    }


def full_view(runtime: RuntimeLike, doc: dict[str, Any]) -> dict[str, Any]:
    """One alarm as ``GET /v1/alarms/{id}`` shows it: history and the trip's carrier."""
    view = render_alarm(doc, runtime.store.alarm_history(doc["alarm_id"]))
    view["carrier"] = trip_carrier(runtime, doc.get("trip_id"))
    return view


def statuses(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    valid = {s.value for s in AlarmStatus}
    bad = [s for s in wanted if s not in valid]
    if bad:
        raise ApiError(
            f"status must be among {', '.join(sorted(valid))} (comma-separated)",
            status=422,
            code="validation_error",
        )
    return wanted or None


def list_kind(
    runtime: RuntimeLike,
    principal: Principal,
    kind: str,
    *,
    status: str | None,
    type: str | None,
    trip_id: str | None,
    shipper: str | None,
    assigned_to: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    history: bool,
) -> list[dict[str, Any]]:
    """Views of the alarms (or exceptions) a key may see, newest first."""
    wanted = statuses(status)
    since_ms = optional_time(since, "since")
    until_ms = optional_time(until, "until")
    if principal.asks_foreign(shipper):
        return []
    docs = runtime.store.list_alarms(
        status=wanted,
        type=type,
        trip_id=trip_id,
        shipper=principal.shipper_filter(shipper),
        since_ms=since_ms,
        until_ms=until_ms,
        limit=limit,
        kind=kind,
        assigned_to=assigned_to,
    )
    store = runtime.store
    return [
        render_alarm(d, store.alarm_history(d["alarm_id"]) if history else None)
        for d in docs
        if principal.sees(d.get("shipper"))
    ]


@router.get("", response_model=list[AlarmOut], responses=CSV_OPENAPI)
def list_alarms(
    request: Request,
    runtime: RuntimeDep,
    principal: AnyKey,
    status: Annotated[
        str | None,
        Query(max_length=64, description="open, acknowledged, resolved (comma-separated)"),
    ] = None,
    type: AlarmType | None = None,
    trip_id: Annotated[str | None, Query(max_length=128)] = None,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    assigned_to: Annotated[
        str | None, Query(max_length=64, description="the name of the key it is assigned to")
    ] = None,
    since: Annotated[str | None, Query(description=f"raised at or after; {TIME_HELP}")] = None,
    until: Annotated[str | None, Query(description=f"raised before; {TIME_HELP}")] = None,
    limit: Limit = 500,
    history: Annotated[bool, Query(description="include each alarm's history")] = True,
) -> Any:
    """The alarm queue (engine alarms; exceptions are under ``/v1/exceptions``), newest
    first; a shipper key sees only its own. CSV with ``Accept: text/csv``."""
    csv = wants_csv(request)
    views = list_kind(
        runtime,
        principal,
        "alarm",
        status=status,
        type=None if type is None else type.value,
        trip_id=trip_id,
        shipper=shipper,
        assigned_to=assigned_to,
        since=since,
        until=until,
        limit=limit,
        history=history and not csv,
    )
    if csv:
        return csv_response((csv_row(v) for v in views), CSV_COLUMNS, "alarms.csv")
    return views


@router.get("/{alarm_id}", response_model=AlarmOut)
def get_alarm(alarm_id: AnyId, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """One alarm with its full history (who, when, what) and its trip's carrier."""
    return full_view(runtime, visible_alarm(runtime, principal, alarm_id))


# -- handling (shared with /v1/exceptions) ---------------------------------------------------
def ack(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, body: AckIn, kind: str | None
) -> dict:
    visible_alarm(runtime, principal, alarm_id, kind)
    return runtime.alarms.ack(alarm_id, by=principal.actor, note=body.note, key_id=principal.key_id)


def resolve(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, body: ResolveIn, kind: str | None
) -> dict:
    visible_alarm(runtime, principal, alarm_id, kind)
    return runtime.alarms.resolve(
        alarm_id,
        by=principal.actor,
        cause=body.cause.value,
        action=body.action,
        feedback=body.feedback,
        key_id=principal.key_id,
    )


def assign(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, body: AssignIn, kind: str | None
) -> dict:
    visible_alarm(runtime, principal, alarm_id, kind)
    if body.to is not None and body.to not in runtime.assignable_names():
        raise ApiError(
            "'to' must be the name of a desk or admin key",
            status=422,
            code="validation_error",
            to=body.to,
        )
    return runtime.alarms.assign(alarm_id, to=body.to, by=principal.actor, key_id=principal.key_id)


def add_note(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, body: NoteIn, kind: str | None
) -> dict:
    visible_alarm(runtime, principal, alarm_id, kind)
    return runtime.alarms.add_note(
        alarm_id,
        text=body.text,
        contact=None if body.contact is None else body.contact.value,
        outcome=body.outcome,
        by=principal.actor,
        key_id=principal.key_id,
    )


def feedback(
    runtime: RuntimeLike, principal: Principal, alarm_id: str, body: FeedbackIn, kind: str | None
) -> dict:
    visible_alarm(runtime, principal, alarm_id, kind)
    return runtime.alarms.feedback(
        alarm_id,
        verdict=body.verdict.value,
        comment=body.comment,
        by=principal.actor,
        key_id=principal.key_id,
    )


@router.post("/{alarm_id}/ack", response_model=AlarmOut, responses=CONFLICT)
def ack_alarm(alarm_id: AnyId, body: AckIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Acknowledge an open alarm (409 when it is not open)."""
    return ack(runtime, principal, alarm_id, body, None)


@router.post("/{alarm_id}/resolve", response_model=AlarmOut, responses=CONFLICT)
def resolve_alarm(alarm_id: AnyId, body: ResolveIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Resolve an open or acknowledged alarm with cause, action and customer feedback
    (409 when already resolved)."""
    return resolve(runtime, principal, alarm_id, body, None)


@router.post("/{alarm_id}/assign", response_model=AlarmOut, responses=CONFLICT)
def assign_alarm(alarm_id: AnyId, body: AssignIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Make the alarm a desk operator's (``to``: a key's name; null: nobody's). The status
    does not change; 409 once resolved."""
    return assign(runtime, principal, alarm_id, body, None)


@router.post("/{alarm_id}/notes", response_model=AlarmOut)
def note_alarm(alarm_id: AnyId, body: NoteIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Log a call (whom, what was said, the outcome) in the alarm's history; in any status,
    the status does not change."""
    return add_note(runtime, principal, alarm_id, body, None)


@router.post("/{alarm_id}/feedback", response_model=AlarmOut, responses=CONFLICT)
def feedback_alarm(
    alarm_id: AnyId, body: FeedbackIn, runtime: RuntimeDep, principal: AdminOrTenant
) -> dict:
    """The shipper's verdict on how a resolved alarm was handled (409 before it is
    resolved); kept on the alarm and in its history. Not sent as a webhook."""
    return feedback(runtime, principal, alarm_id, body, None)
