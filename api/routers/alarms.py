"""``/v1/alarms``: the alarm queue, one alarm with its history, acknowledge and resolve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from alerts import AlarmStatus, Cause
from api.auth import AnyKey, Desk, Principal
from api.deps import RuntimeDep, RuntimeLike
from api.errors import ERROR_RESPONSES, ApiError, ErrorResponse, NotFound
from api.params import TIME_HELP, AnyId, Limit, optional_time
from api.render import render_alarm
from rules import AlarmType

router = APIRouter(prefix="/v1/alarms", tags=["alarms"], responses=ERROR_RESPONSES)

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "Not allowed in the alarm's current status"}
}


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=128, description="desk operator, e.g. desk-07")
    note: str | None = Field(None, max_length=4000)


class ResolveIn(BaseModel):
    """The handling record returned to the shipper."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=128)
    cause: Cause
    action: str | None = Field(None, max_length=4000)
    feedback: str | None = Field(None, max_length=4000)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    at: str | None
    by: str | None
    action: str
    note: str | None = None


class AlarmOut(BaseModel):
    """An alarm with its deadlines, escalation and history."""

    model_config = ConfigDict(extra="allow")

    alarm_id: str
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
    resolution: dict[str, Any] | None = None
    history: list[HistoryEntry]


def _visible_alarm(runtime: RuntimeLike, principal: Principal, alarm_id: str) -> dict[str, Any]:
    doc = runtime.store.get_alarm(alarm_id)
    if doc is None or not principal.sees(doc.get("shipper")):
        raise NotFound("no such alarm", alarm_id=alarm_id)
    return doc


def _statuses(raw: str | None) -> list[str] | None:
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


@router.get("", response_model=list[AlarmOut])
def list_alarms(
    runtime: RuntimeDep,
    principal: AnyKey,
    status: Annotated[
        str | None,
        Query(max_length=64, description="open, acknowledged, resolved (comma-separated)"),
    ] = None,
    type: AlarmType | None = None,
    trip_id: Annotated[str | None, Query(max_length=128)] = None,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[str | None, Query(description=f"raised at or after; {TIME_HELP}")] = None,
    until: Annotated[str | None, Query(description=f"raised before; {TIME_HELP}")] = None,
    limit: Limit = 500,
    history: Annotated[bool, Query(description="include each alarm's history")] = True,
) -> list[dict]:
    """The alarm queue, newest first; a shipper key sees only its own."""
    statuses = _statuses(status)
    since_ms = optional_time(since, "since")
    until_ms = optional_time(until, "until")
    if principal.asks_foreign(shipper):
        return []
    docs = runtime.store.list_alarms(
        status=statuses,
        type=None if type is None else type.value,
        trip_id=trip_id,
        shipper=principal.shipper_filter(shipper),
        since_ms=since_ms,
        until_ms=until_ms,
        limit=limit,
    )
    store = runtime.store
    return [
        render_alarm(d, store.alarm_history(d["alarm_id"]) if history else None)
        for d in docs
        if principal.sees(d.get("shipper"))
    ]


@router.get("/{alarm_id}", response_model=AlarmOut)
def get_alarm(alarm_id: AnyId, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """One alarm with its full history (who, when, what)."""
    doc = _visible_alarm(runtime, principal, alarm_id)
    return render_alarm(doc, runtime.store.alarm_history(alarm_id))


@router.post("/{alarm_id}/ack", response_model=AlarmOut, responses=_CONFLICT)
def ack_alarm(alarm_id: AnyId, body: AckIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Acknowledge an open alarm (409 when it is not open)."""
    _visible_alarm(runtime, principal, alarm_id)
    return runtime.alarms.ack(alarm_id, by=body.by, note=body.note)


@router.post("/{alarm_id}/resolve", response_model=AlarmOut, responses=_CONFLICT)
def resolve_alarm(alarm_id: AnyId, body: ResolveIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Resolve an open or acknowledged alarm with cause, action and customer feedback
    (409 when already resolved)."""
    _visible_alarm(runtime, principal, alarm_id)
    return runtime.alarms.resolve(
        alarm_id,
        by=body.by,
        cause=body.cause.value,
        action=body.action,
        feedback=body.feedback,
    )
